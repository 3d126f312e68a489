"""The agent's jobs: their records on disk and the worker that runs them one at a time.

A record holds no secret and no training data; after a restart every job that had not ended is queued again
and resumes: docs/trainer.md ("Job states", "Restart"). A job's states and what the API shows of it are
contracts with the Airflow layer (:mod:`securetrain.core.contracts.jobs`).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from securetrain.core.attestation.tokens import ValidatedToken
from securetrain.core.audit.tee_log import TeeEventKind
from securetrain.core.contracts.job_spec import CheckpointLocation, JobSpec
from securetrain.core.contracts.jobs import (
    EpochRecord,
    JobError,
    JobResult,
    JobState,
    JobStatus,
    JobView,
    KeyRelease,
    Provenance,
    RecipientCopy,
    TeeSignature,
    Transition,
)
from securetrain.core.contracts.training import (
    DataValidationFailed,
    JobKeys,
    ProgressSink,
    TrainingCancelled,
    TrainingResult,
    TrainingSpec,
)
from securetrain.core.errors import SecuretrainError, SecurityViolation
from securetrain.core.fsutil import atomic_output
from securetrain.core.model_provenance import DatasetDigest, model_statement, sign_statement
from securetrain.core.sealed import KekPrivateKey, SealedHeader, content_digest
from securetrain.core.sealed.errors import SealedFileError
from securetrain.core.sealed.header import read_header
from securetrain.core.storage import BlobInfo, BlobStore
from securetrain.tee.agent.exports import ExportRequest, export_model
from securetrain.tee.agent.metrics import RunnerMetrics
from securetrain.tee.agent.recipients import seal_for_recipients
from securetrain.tee.agent.rewrap import RewrapRequest, run_rewrap
from securetrain.tee.agent.tee_events import TeeEvents
from securetrain.tee.attest import AttestationSession, AttestationState, Attester, ReattestationFailed, TeeKey
from securetrain.tee.data_owners import DataOwnerKeys
from securetrain.tee.key_supply import TeeKeySupply
from securetrain.tee.datasets import read_manifests, resolve_training
from securetrain.tee.governance import AdmittedJob, ContractGuard, ContractWithdrawn, admit, ledger_token_check
from securetrain.tee.privacy_budget import PrivacyBudget, open_ledger
from securetrain.tee.release import VaultKeyReleaser

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobNotFound(SecuretrainError):
    """No job has this id."""


class JobConflict(SecuretrainError):
    """The request contradicts the job's record (another spec under the same run id, cancel after the end)."""


class PrivacyNotAccounted(SecurityViolation):
    """A DP-SGD job ended without the privacy its accountant spent: nothing can be recorded against the budget."""


class ProvenanceNotWitnessed(SecurityViolation):
    """The agent did not see what it would have to sign: a shard's sealed header or the sealed model."""


class _HeaderWitness:
    """A shard's read stream that keeps the bytes read until they hold the whole sealed header."""

    # The header is at most two 64 KiB sections plus a few fixed bytes (securetrain.core.sealed.header).
    _LIMIT = 2 * (64 << 10) + 64

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._prefix = bytearray()
        self.header: SealedHeader | None = None

    def read(self, size: int = -1) -> bytes:
        data = self._src.read(size)
        if self.header is None and len(self._prefix) < self._LIMIT:
            self._prefix += data
            try:
                self.header = read_header(io.BytesIO(bytes(self._prefix)))
            except SealedFileError:
                pass  # not all of it read yet; a header that never parses leaves the shard unwitnessed
        return data

    def close(self) -> None:
        self._src.close()

    def __enter__(self) -> _HeaderWitness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _WitnessedStore:
    """The job's storage as training sees it, with the agent as witness.

    It records the sealed header of every dataset shard training reads and the digests of the sealed model
    and checkpoints it uploads, so that what the TEE signs names exactly the bytes training read and wrote,
    not whatever storage holds when someone looks later (anyone can seal a file for the KEK's public key).
    """

    def __init__(self, store: BlobStore, spec: TrainingSpec) -> None:
        self._store = store
        self._spec = spec
        self._shards: dict[tuple[str, str], _HeaderWitness] = {}
        self.model: tuple[str, str] | None = None  # (sealed SHA-256, plaintext SHA-256)
        self.sealed_model: bytes | None = None
        self.checkpoints: dict[str, str] = {}  # checkpoint blob -> sealed SHA-256 (content digest)

    def open_read(self, container: str, blob: str, *, length: int | None = None) -> BinaryIO:
        src = self._store.open_read(container, blob, length=length)
        if not any(s.container == container and s.blob == blob for s in self._spec.datasets):
            return src
        witness = _HeaderWitness(src)
        self._shards[(container, blob)] = witness
        return witness  # type: ignore[return-value]

    def upload_stream(self, container: str, blob: str, stream: BinaryIO, **options: Any) -> BlobInfo:
        output, checkpoints = self._spec.output, self._spec.checkpoints
        is_model = (container, blob) == (output.container, output.blob)
        if not is_model and not (container == checkpoints.container and blob.startswith(checkpoints.prefix)):
            return self._store.upload_stream(container, blob, stream, **options)
        # Sealed models and checkpoints are small enough to be in memory already (training sealed them there).
        length = options.pop("length", None)
        sealed = stream.read() if length is None else stream.read(length)
        if is_model:
            self.model = (content_digest(sealed), read_header(io.BytesIO(sealed)).content.plaintext_sha256)
            self.sealed_model = sealed
        else:
            self.checkpoints[blob] = content_digest(sealed)
        return self._store.upload_stream(container, blob, io.BytesIO(sealed), length=len(sealed), **options)

    def list_blobs(self, container: str, prefix: str = "") -> Any:
        return self._store.list_blobs(container, prefix)

    def dataset_digests(self) -> list[DatasetDigest]:
        """The plaintext digest of every shard of the spec, from the header training read; all must be there."""
        digests = []
        for shard in self._spec.datasets:
            witness = self._shards.get((shard.container, shard.blob))
            if witness is None or witness.header is None:
                raise ProvenanceNotWitnessed(
                    f"the agent did not see the sealed header of {shard.container}/{shard.blob}: cannot attest "
                    "which data the model was trained on"
                )
            digests.append(DatasetDigest(f"{shard.container}/{shard.blob}", witness.header.content.plaintext_sha256))
        return digests


#: ``securetrain.tee.training.run_training`` (see securetrain.core.contracts.training).
TrainingFunction = Callable[[TrainingSpec, JobKeys, BlobStore, ProgressSink, threading.Event], TrainingResult]


class JobRecord(JobStatus):
    """What the agent knows about one job: its status, the whole spec (nonce included) and the next unused
    attestation number (nonces are spent by the attestation service, never reused). Served, less the spec's
    details, as :class:`JobView` on ``GET /v1/jobs/{id}``."""

    spec: JobSpec
    attestation_sequence: int = 0

    def view(self) -> JobView:
        """The job as the API shows it: state and progress, the spec's run id, KEK and locations, no nonce."""
        status = {name: getattr(self, name) for name in JobStatus.model_fields}
        return JobView(**status, kek_id=self.spec.kek_id, output=self.spec.output, checkpoints=self.spec.checkpoints)


class JobStore:
    """Job records in a directory, one JSON file each (0600; the directory 0700)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._directory = directory

    def _path(self, job_id: str) -> Path:
        return self._directory / f"{job_id}.json"

    def save(self, record: JobRecord) -> None:
        with atomic_output(self._path(record.job_id)) as out:
            out.write(record.model_dump_json().encode())

    def load_all(self) -> list[JobRecord]:
        records = []
        for path in sorted(self._directory.glob("*.json")):
            try:
                records.append(JobRecord.model_validate_json(path.read_bytes()))
            except ValueError as exc:  # not JSON, or not a job record (pydantic's ValidationError is a ValueError)
                # A record we cannot read is left for an operator; it must not stop the agent.
                log.error("ignoring unreadable job record %s: %s", path, exc)
        return sorted(records, key=lambda record: record.created_at)


def withheld(aggregates: Mapping[str, Any]) -> dict[str, Any]:
    """What leaves the TEE of validation aggregates a contract keeps inside: whether the suite passed."""
    return {"success": bool(aggregates.get("success")), "withheld": "the contract keeps aggregates in the TEE"}


class _JobProgress:
    """The :class:`ProgressSink` the training side reports to; it updates the job's record.

    ``at_epoch_boundary`` runs after each epoch's checkpoint is sealed, before the next epoch reads any data
    (a job under a contract checks it is still in force there); ``share_metrics`` False keeps the metrics in
    the TEE (a contract that does not let them leave).
    """

    def __init__(
        self, run: _JobRun, events: TeeEvents, witness: _WitnessedStore, where: CheckpointLocation, *,
        at_epoch_boundary: Callable[[], None] | None = None, share_metrics: bool = True,
    ) -> None:  # fmt: skip
        self._run, self._events, self._witness, self._checkpoints = run, events, witness, where
        self._runner, self._job_id = run.runner, run.job_id
        self._at_epoch_boundary, self._share_metrics = at_epoch_boundary, share_metrics

    def validation_done(self, aggregates: Mapping[str, Any]) -> None:
        aggregates = aggregates if self._share_metrics else withheld(aggregates)
        self._events.record(TeeEventKind.DATA_VALIDATED, {"aggregates": dict(aggregates)})
        self._runner._update(self._job_id, state=JobState.TRAINING, validation=dict(aggregates))

    def epoch_done(self, epoch: int, step: int, metrics: Mapping[str, float], checkpoint_blob: str) -> None:
        metrics = metrics if self._share_metrics else {}
        self._events.record(TeeEventKind.CHECKPOINT_SEALED, {
            "epoch": epoch, "step": step, "metrics": dict(metrics),
            "blob": f"{self._checkpoints.container}/{checkpoint_blob}",
            "sealed_sha256": self._witness.checkpoints[checkpoint_blob],
        })  # fmt: skip
        history = (*self._runner.get(self._job_id).history, EpochRecord(epoch=epoch, step=step, **metrics))
        self._runner._update(
            self._job_id, epoch=epoch, step=step, metrics=dict(metrics), last_checkpoint=checkpoint_blob, history=history
        )
        self._runner.metrics.epochs_completed.inc()
        if self._run.renewal_failure is not None:
            raise self._run.renewal_failure
        if self._at_epoch_boundary is not None:
            self._at_epoch_boundary()

    def sealing_model(self) -> None:
        self._runner._update(self._job_id, state=JobState.SEALING)


class _JobRun:
    """One run of a job in the worker: its cancel event and what the background re-attestation reported."""

    def __init__(self, runner: JobRunner, job_id: str, cancel: threading.Event) -> None:
        self.runner = runner
        self.job_id = job_id
        self.cancel = cancel
        self.renewal_failure: ReattestationFailed | None = None
        self.events: TeeEvents | None = None  # the job's TEE event log, once the job has its TEE key
        self.share_metrics = True  # False under a contract that keeps metrics and aggregates in the TEE

    def attested(self, state: AttestationState) -> None:
        self.runner.latest_attestation = state
        self.runner.latest_attestation_job = self.job_id
        self.runner.metrics.attestations.inc()
        # Persisted before the token is used: a restarted job must never reuse a spent nonce.
        self.runner._update(self.job_id, attestation_sequence=state.sequence + 1)
        if self.events is not None:
            self.events.attested(state.token, state.sequence, state.gpu)

    def renewal_failed(self, failure: ReattestationFailed) -> None:
        self.runner.metrics.attestation_failures.inc()
        self.renewal_failure = failure
        self.cancel.set()

    def check_cancelled(self) -> None:
        """Between the agent's own steps: stop if re-attestation failed or a cancel came."""
        if self.renewal_failure is not None:
            raise self.renewal_failure
        if self.cancel.is_set():
            raise TrainingCancelled("cancelled before training started")

    def stopped(self, exc: TrainingCancelled) -> None:
        """The job stopped at a safe point: failed re-attestation, a cancel, or the agent shutting down."""
        if self.renewal_failure is not None:
            self.runner._finish(self.job_id, JobState.FAILED, error=JobError.from_exception(self.renewal_failure))
        elif self.runner.get(self.job_id).cancel_requested:
            self.runner._finish(self.job_id, JobState.CANCELLED)
        else:
            # The job keeps its state and resumes when the agent starts again.
            log.info("job %s interrupted by shutdown (%s); it resumes when the agent restarts", self.job_id, exc)


class JobRunner:
    """Accepts jobs and runs them one at a time in a worker thread.

    The steps of a job: attest a fresh TEE key, have the KEK released to it, start re-attestation in
    the background, hand over to training, record the result. A failure at any step fails the job with
    the error's own message (a refused release names the policy condition the vault reported).
    """

    def __init__(
        self,
        store: JobStore,
        attester: Attester,
        releaser: VaultKeyReleaser,
        blob_store: BlobStore,
        train: Callable[[], TrainingFunction],
        data_owners: DataOwnerKeys,
    ) -> None:
        self._store = store
        self._attester = attester
        self._releaser = releaser
        self._blob_store = blob_store
        self._load_training = train
        # The job's, a challenge's, an export's and a rewrap's own key, each made ahead (securetrain.tee.key_supply).
        self._tee_keys = TeeKeySupply()
        #: The data owners whose signatures this TEE accepts (pinned in its measured configuration).
        self.data_owners = data_owners
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}
        self._cancel_events: dict[str, threading.Event] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.latest_attestation: AttestationState | None = None
        self.latest_attestation_job: str | None = None
        self.metrics = RunnerMetrics()
        self.device: str | None = None
        for record in store.load_all():
            self._records[record.job_id] = record
            if not record.state.finished:
                log.info(
                    "job %s (run %s) was %s when the agent stopped: resuming it",
                    record.job_id,
                    record.run_id,
                    record.state.value,
                )
                self._enqueue(record.job_id)

    @property
    def tee_type(self) -> str:
        return self._attester.tee_type

    @property
    def gpu_type(self) -> str | None:
        """The GPU the TEE attests before any key (None: it requires none)."""
        return self._attester.gpu.provider.gpu_type if self._attester.gpu is not None else None

    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, name="job-runner", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Ask the running job to stop at a safe point (it stays resumable) and end the worker."""
        self._stopping.set()
        with self._lock:
            for event in self._cancel_events.values():
                event.set()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=60)
        self._tee_keys.close()

    def attest_challenge(self, nonce: str) -> ValidatedToken:
        """Attest a throwaway key with a caller's ``nonce``: the TEE's answer to "prove what you are, now"."""
        token = self._attester.attest(self._tee_keys.take(), nonce)
        self.metrics.attestations.inc()
        return token

    def export_model(self, request: ExportRequest) -> bytes:
        """The model re-sealed for a recipient the data owner approved, the export recorded by the TEE
        (:mod:`securetrain.tee.agent.exports`). The only place a model is decrypted outside training, inside the TEE."""
        return export_model(
            request, tee_key=self._tee_keys.take(), attester=self._attester, releaser=self._releaser,
            store=self._blob_store, owners=self.data_owners, metrics=self.metrics,
        )  # fmt: skip

    def rewrap(self, request: RewrapRequest) -> dict[str, Any]:
        """KEK rotation's rewrap, inside the TEE (:mod:`securetrain.tee.agent.rewrap`); the TEE-signed answer."""
        answer = run_rewrap(request, self._tee_keys.take(), self._attester, self._releaser, self._blob_store)
        self.metrics.attestations.inc()
        self.metrics.key_releases.inc(len(answer["statement"]["released_versions"]))
        return answer

    def _enqueue(self, job_id: str) -> None:
        self._cancel_events[job_id] = threading.Event()
        self._queue.put(job_id)

    def submit(self, spec: JobSpec) -> tuple[JobRecord, bool]:
        """Queue ``spec``; returns its record and whether it is new (False: this run id was submitted before).

        A job under a contract is admitted first (:func:`~securetrain.tee.governance.admit`): one outside the
        contract, or under a contract not in force, is refused here and never exists.
        """
        with self._lock:
            existing = self._existing(spec)
        if existing is not None:
            return existing, False
        if spec.contract is not None:
            self._admit(spec)
        with self._lock:
            existing = self._existing(spec)  # the same run id submitted meanwhile
            if existing is not None:
                return existing, False
            now = time.time()
            record = JobRecord(job_id=spec.job_id, run_id=spec.run_id, spec=spec, created_at=now, updated_at=now)
            self._store.save(record)
            self._records[record.job_id] = record
            self._enqueue(record.job_id)
        log.info("job %s queued for run %s", record.job_id, record.run_id)
        return record, True

    def _existing(self, spec: JobSpec) -> JobRecord | None:
        """The record of an earlier submission of ``spec``'s run id; the caller holds the lock.

        Raises:
            JobConflict: that run id was submitted with another spec.
        """
        existing = self._records.get(spec.job_id)
        if existing is not None and existing.spec != spec:
            document, recorded = spec.to_json(), existing.spec.to_json()
            changed = sorted(k for k in document.keys() | recorded.keys() if document.get(k) != recorded.get(k))
            raise JobConflict(
                f"run id {spec.run_id!r} was already submitted with another spec (differs in "
                f"{', '.join(changed)}); a new run needs a new run id"
            )
        return existing

    def _admit(self, spec: JobSpec) -> AdmittedJob:
        assert spec.contract is not None
        check = ledger_token_check(self._attester, spec.contract.digest)
        return admit(spec, self._blob_store, check, now=datetime.now(UTC))

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            try:
                return self._records[job_id]
            except KeyError:
                raise JobNotFound(f"no job {job_id!r} on this agent") from None

    def jobs(self) -> list[JobRecord]:
        with self._lock:
            return list(self._records.values())

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job: a queued one at once, a running one at its next safe point (end of a step)."""
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                raise JobNotFound(f"no job {job_id!r} on this agent")
            if record.state.finished:
                raise JobConflict(f"job {job_id} already {record.state.value}; nothing to cancel")
            event = self._cancel_events.get(job_id)
            if event is not None:
                event.set()
            if record.state is JobState.QUEUED:
                transitions = (*record.transitions, Transition(state=JobState.CANCELLED, time=_now()))
                record = self._set(record, state=JobState.CANCELLED, cancel_requested=True, transitions=transitions)
                self.metrics.jobs_finished.labels(JobState.CANCELLED.value).inc()
            else:
                record = self._set(record, cancel_requested=True)
        log.info("job %s: cancel requested", job_id)
        return record

    def _set(self, record: JobRecord, **changes: Any) -> JobRecord:
        """Replace and persist a record (the changed fields validated); the caller holds the lock."""
        updated = JobRecord.model_validate(dict(record) | changes | {"updated_at": time.time()})
        self._store.save(updated)
        self._records[updated.job_id] = updated
        return updated

    def _update(self, job_id: str, **changes: Any) -> JobRecord:
        with self._lock:
            record = self._records[job_id]
            if "state" in changes:
                changes["transitions"] = (*record.transitions, Transition(state=changes["state"], time=_now()))
            record = self._set(record, **changes)
        if "state" in changes:
            log.info("job %s: %s", job_id, record.state.value)
        return record

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None and not self._stopping.is_set():
            record = self.get(job_id)
            if record.state.finished:
                continue
            self._run(record)

    def _run(self, record: JobRecord) -> None:
        run = _JobRun(self, record.job_id, self._cancel_events[record.job_id])
        session: AttestationSession | None = None
        try:
            spec = record.spec
            # Before any attestation or key: the TEE itself decides which blobs are this job's data, and checks
            # the job against its contract again (it may have been revoked since the job was submitted).
            admitted = self._admit(spec) if spec.contract is not None else None
            if admitted is None:
                training = resolve_training(spec, read_manifests(spec, self._blob_store), self.data_owners)
            else:
                # The manifests admit() held to the contract's pins: a second read, which storage could answer
                # with another owner-signed version, would train on data the contract never named.
                training = resolve_training(spec, admitted.manifests, self.data_owners, admitted.owner_kek_ids(spec.kek_id))
                training = training.model_copy(update={"min_noise_multiplier": admitted.min_noise_multiplier()})
            self._update(run.job_id, state=JobState.ATTESTING)
            tee_key = self._tee_keys.take()
            run.events = TeeEvents.for_job(
                record.tee_log, job_id=record.job_id, run_id=spec.run_id, key=tee_key,
                save=lambda document: self._update(run.job_id, tee_log=document),
            )  # fmt: skip
            session = AttestationSession(
                self._attester, tee_key, spec.nonce, next_sequence=record.attestation_sequence,
                on_attested=run.attested, on_failure=run.renewal_failed,
                contract=admitted.digest if admitted is not None else None,
            )  # fmt: skip
            try:
                token = session.attest().token
            except SecuretrainError:
                self.metrics.attestation_failures.inc()
                raise
            if admitted is not None:
                run.events.record(TeeEventKind.CONTRACT_ENFORCED, admitted.summary())
            run.check_cancelled()
            self._update(run.job_id, state=JobState.RELEASING)
            keys = self._release(spec, admitted, token, session.key, run)
            session.start_renewal()
            budget = self._reserve(spec, admitted, session, run.events) if admitted is not None else None
            run.check_cancelled()
            self._update(run.job_id, state=JobState.VALIDATING)
            witness = _WitnessedStore(self._blob_store, training)
            guard = self._contract_guard(spec, admitted, session, run) if admitted is not None else None
            run.share_metrics = share = admitted is None or admitted.contract.contract.outputs.metrics_may_leave
            progress = _JobProgress(run, run.events, witness, training.checkpoints, at_epoch_boundary=guard, share_metrics=share)
            result = self._load_training()(training, keys, witness, progress, run.cancel)  # type: ignore[arg-type]
            self.device = result.device
            governance, recipients = None, ()
            if admitted is not None:
                recipients = tuple(self._seal_for_recipients(spec, admitted, witness, keys))
                governance = self._settle(spec, admitted, result, budget, recipients, run.events)
            metrics = result.metrics if share else {}
            provenance = self._provenance(spec, result, witness, session, run.events, metrics, governance)
            self._finish(run.job_id, JobState.SUCCEEDED, result=JobResult(
                model=result.model_blob, metrics=metrics, device=result.device, tee_type=self.tee_type,
                epochs_completed=result.epochs_completed, steps_completed=result.steps_completed, provenance=provenance,
                privacy=result.privacy, recipients=recipients,
            ))  # fmt: skip
        except TrainingCancelled as exc:
            run.stopped(exc)
        except DataValidationFailed as exc:
            # The suite's aggregates (never rows) are what the data owner needs to see why.
            log.error("job %s failed: %s", run.job_id, exc)
            aggregates = dict(exc.aggregates) if run.share_metrics else withheld(exc.aggregates)
            if run.events is not None:  # validation runs after the key release, so the log has its attested key
                run.events.record(TeeEventKind.DATA_VALIDATED, {"aggregates": aggregates})
            self._finish(run.job_id, JobState.FAILED, validation=aggregates, error=JobError.from_exception(exc))
        except Exception as exc:  # noqa: BLE001 - every failure must end the job with its reason, fail closed
            if isinstance(exc, SecuretrainError):
                log.error("job %s failed: %s", run.job_id, exc)
            else:
                log.exception("job %s failed with an unexpected error", run.job_id)
            self._finish(run.job_id, JobState.FAILED, error=JobError.from_exception(exc))
        finally:
            if session is not None:
                session.stop()

    def _contract_guard(
        self, spec: JobSpec, admitted: AdmittedJob, session: AttestationSession, run: _JobRun
    ) -> Callable[[], None]:
        """The check at each epoch boundary: the contract still in force, every owner's key still released to
        the job's current token; a withdrawal is recorded in the TEE log, and the job stops."""
        guard = ContractGuard(admitted, spec, self._blob_store, self._release_private)

        def check() -> None:
            assert session.state is not None and run.events is not None
            try:
                guard.check(session.state.token, session.key)
            except ContractWithdrawn as exc:
                run.events.record(TeeEventKind.CONTRACT_REVOKED, exc.details)
                raise

        return check

    def _release_private(self, kek_id: str, token: ValidatedToken, key: TeeKey) -> KekPrivateKey:
        return self._releaser.release_version(kek_id, token, key).private

    def _release(
        self, spec: JobSpec, admitted: AdmittedJob | None, token: ValidatedToken, key: TeeKey, run: _JobRun
    ) -> JobKeys:
        """The job's KEK and, under a contract, every other owner's, each released under its owner's policy:
        one refusal stops the run."""
        owner_kek_ids = admitted.owner_kek_ids(spec.kek_id) if admitted is not None else []
        released = {kek_id: self._release_private(kek_id, token, key) for kek_id in (spec.kek_id, *owner_kek_ids)}
        assert run.events is not None
        for kek_id in released:
            self.metrics.key_releases.inc()
            run.events.record(TeeEventKind.KEY_RELEASED, {"kek_id": kek_id})
        self._update(run.job_id, key_release=KeyRelease(kek_id=spec.kek_id, released_at=_now()))
        job_kek = released.pop(spec.kek_id)
        return JobKeys.from_released(job_kek, spec.kek_id, released)

    def _reserve(
        self, spec: JobSpec, admitted: AdmittedJob, session: AttestationSession, events: TeeEvents
    ) -> PrivacyBudget | None:
        """Reserve the job's ε in the contract's ledger before it trains; None for a job without DP."""
        if spec.privacy is None or session.state is None:
            return None
        budget = PrivacyBudget(
            open_ledger(self._blob_store, admitted.digest), admitted.digest,
            ledger_token_check(self._attester, admitted.digest), key=session.key, token=session.state.token,
            job=events.origin(),
        )  # fmt: skip
        epsilon = admitted.privacy_reservation(spec)
        entry = budget.reserve(spec.run_id, epsilon, spec.privacy.delta, admitted.privacy_totals())
        events.record(TeeEventKind.BUDGET_RESERVED, {"contract": admitted.digest, "epsilon": epsilon,
                                                      "delta": spec.privacy.delta, "ledger": entry.reference()})  # fmt: skip
        return budget

    def _seal_for_recipients(
        self, spec: JobSpec, admitted: AdmittedJob, witness: _WitnessedStore, keys: JobKeys
    ) -> list[RecipientCopy]:
        if witness.sealed_model is None:
            raise ProvenanceNotWitnessed("the agent did not see the sealed model uploaded: cannot seal it for the consumers")
        return seal_for_recipients(
            witness.sealed_model, keys.kek_private, run_id=spec.run_id, output=spec.output,
            outputs=admitted.contract.contract.outputs, store=self._blob_store,
        )  # fmt: skip

    def _settle(
        self, spec: JobSpec, admitted: AdmittedJob, result: TrainingResult, budget: PrivacyBudget | None,
        recipients: Sequence[RecipientCopy], events: TeeEvents,
    ) -> dict[str, Any]:  # fmt: skip
        """Record what the run spent in the ledger (before the result is reported: the spend and the result go
        together); what the model statement says of the contract."""
        governance: dict[str, Any] = {"contract": admitted.digest,
                                      "recipients": [copy.model_dump(mode="json") for copy in recipients]}  # fmt: skip
        if budget is not None:
            if result.privacy is None:
                raise PrivacyNotAccounted("the job asked for DP-SGD but training reported no privacy spent")
            spent = {dataset: result.privacy.epsilon for dataset in admitted.privacy_reservation(spec)}
            entry = budget.settle(spec.run_id, spent, result.privacy.delta, result.privacy.accountant)
            privacy = {"epsilon": spent, "delta": result.privacy.delta, "accountant": result.privacy.accountant}
            events.record(TeeEventKind.BUDGET_SPENT, {"contract": admitted.digest, **privacy, "ledger": entry.reference()})
            governance |= {"privacy": {**result.privacy.model_dump(mode="json"), "ledger": entry.reference()}}
        return governance

    def _provenance(
        self, spec: JobSpec, result: TrainingResult, witness: _WitnessedStore, session: AttestationSession,
        events: TeeEvents, metrics: Mapping[str, float], governance: Mapping[str, Any] | None,
    ) -> Provenance:  # fmt: skip
        """The model statement signed with the job's TEE key, and the token that attests that key.

        The sealed model is the TEE log's final entry; the statement names the head that signs it, so the
        TEE's events up to here can be checked for in the audit log (none removed, no rollback)."""
        if witness.model is None or session.state is None:
            raise ProvenanceNotWitnessed("the agent did not see the sealed model uploaded: cannot attest it")
        sealed_sha256, plaintext_sha256 = witness.model
        events.record(TeeEventKind.MODEL_SEALED, {
            "blob": f"{result.model_blob.container}/{result.model_blob.blob}", "sealed_sha256": sealed_sha256,
            "plaintext_sha256": plaintext_sha256,
        })  # fmt: skip
        document = spec.to_json()
        statement = model_statement(
            run_id=spec.run_id, sealed_model_sha256=sealed_sha256, model_plaintext_sha256=plaintext_sha256,
            datasets=witness.dataset_digests(),
            hyperparameters={"model": document["model"], **document["hyperparameters"]}, metrics=metrics,
            tee_log_head=events.head_reference(), governance=governance,
        )  # fmt: skip
        log.info("job %s: signed the model statement (sealed model sha256 %s)", spec.job_id, sealed_sha256)
        return Provenance(
            statement=statement,
            tee_signature=TeeSignature(**sign_statement(session.key.private_key, statement)),
            attestation_token=session.state.token.raw,
        )

    def _finish(self, job_id: str, state: JobState, **changes: Any) -> None:
        self._update(job_id, state=state, **changes)
        self.metrics.jobs_finished.labels(state.value).inc()
