"""Stage 3, attested training: the job goes to the TEE, which attests, obtains the key and trains.

The trainer's run id is derived from the DAG run, so a retried task finds the job it submitted rather than
starting another. When the job succeeded, Airflow validates the attestation the job ran under against the KEK's
release policy itself, and returns its claims (never the token) with the metrics.

Under a contract the job spec names it (``ContractRef``) and the TEE admits the job only inside its terms: a
refusal (400 naming the term, 424 for a contract not in force) fails the task without retry and is recorded in
the run's audit log as a governance event.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from securetrain.airflow.enclave import attest_now, challenge_policy
from securetrain.airflow.failures import SecurityCheckFailed, fail_closed
from securetrain.airflow.hooks.attestation import AttestationHook, claims_summary
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.hooks.keyvault import KeyVaultHook
from securetrain.airflow.hooks.storage import SecureStorageHook
from securetrain.airflow.locations import (
    CHECKPOINTS_CONTAINER,
    MODELS_CONTAINER,
    checkpoint_prefix,
    job_run_id,
    model_output_blob,
)
from securetrain.airflow.triggers import TrainingJobTrigger, progress_lines
from securetrain.core.attestation.tokens import TokenRejected
from securetrain.core.contracts.job_spec import JobSpec
from securetrain.core.contracts.jobs import JobState, JobView
from securetrain.core.contracts.stages import TrainingStageResult
from securetrain.core.cvm_client import CvmAttestationRefused, CvmConflict, CvmRequestRejected
from securetrain.core.errors import SecuretrainError

class AttestedTrainingOperator(BaseOperator):
    """Submits the training job to the confidential VM and waits for it (deferred by default).

    ``contract`` (a contract's digest) runs the job under that contract; ``privacy`` (``{epsilon, delta,
    max_grad_norm, accountant}``) trains it with DP-SGD.

    Returns (XCom) a :class:`~securetrain.core.contracts.stages.TrainingStageResult`: the job, the
    attestation claims, key release, curve, validation aggregates, model, checkpoints and provenance; the
    privacy spent and the consumers' copies of the model when there are any.
    """

    template_fields: Sequence[str] = ("kek_id", "datasets", "model", "hyperparameters", "columns", "expectation_suite",
                                      "contract", "privacy")  # fmt: skip
    template_fields_renderers = {"model": "json", "hyperparameters": "json", "expectation_suite": "json", "privacy": "json"}
    ui_color = "#fbe3c4"

    def __init__(
        self,
        *,
        kek_id: str,
        datasets: Sequence[Mapping[str, Any]],
        model: Mapping[str, Any],
        hyperparameters: Mapping[str, Any],
        columns: Mapping[str, Any],
        expectation_suite: Mapping[str, Any] | None = None,
        contract: str | None = None,
        privacy: Mapping[str, Any] | None = None,
        poll_interval: float = 5.0,
        deferrable: bool = True,
        cvm_conn_id: str = ConfidentialVmHook.default_conn_name,
        attestation_conn_id: str = AttestationHook.default_conn_name,
        keyvault_conn_id: str = KeyVaultHook.default_conn_name,
        storage_conn_id: str = SecureStorageHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kek_id = kek_id
        self.datasets = datasets
        self.model = model
        self.hyperparameters = hyperparameters
        self.columns = columns
        self.expectation_suite = expectation_suite
        self.contract = contract
        self.privacy = privacy
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self.cvm_conn_id = cvm_conn_id
        self.attestation_conn_id = attestation_conn_id
        self.keyvault_conn_id = keyvault_conn_id
        self.storage_conn_id = storage_conn_id

    def job_spec(self, run: str) -> JobSpec:
        """The run's job spec, checked here: a bad parameter fails the task before any TEE work."""
        spec: dict[str, Any] = {
            "run_id": run,
            "nonce": secrets.token_urlsafe(32),
            "kek_id": self.kek_id,
            "datasets": [{"container": ref["container"], "manifest": ref["manifest"]} for ref in self.datasets],
            "columns": dict(self.columns),
            "model": dict(self.model),
            "hyperparameters": dict(self.hyperparameters),
            "checkpoints": {"container": CHECKPOINTS_CONTAINER, "prefix": checkpoint_prefix(run)},
            "output": {"container": MODELS_CONTAINER, "blob": model_output_blob(run)},
        }
        if self.expectation_suite:
            spec["expectation_suite"] = dict(self.expectation_suite)
        if self.contract:
            from securetrain.core.governance.store import CONTRACTS_CONTAINER  # noqa: PLC0415 - keeps DAG parsing light

            spec["contract"] = {"container": CONTRACTS_CONTAINER, "digest": self.contract}
        if self.privacy:
            spec["privacy"] = dict(self.privacy)
        return JobSpec.from_json(spec)

    def execute(self, context: Context) -> dict[str, Any]:
        run = job_run_id(context["dag"].dag_id, context["run_id"])
        with fail_closed("attested training"):
            spec = self.job_spec(run)
            job_id = spec.job_id
            with ConfidentialVmHook(self.cvm_conn_id).get_conn() as client:
                try:
                    job = client.submit(spec)
                    self.log.info("submitted job %s (run %s) to %s: %d dataset(s), model %s, %s epochs", job_id, run,
                                  client.endpoint, len(spec.datasets), spec.model.name,
                                  spec.hyperparameters.epochs)  # fmt: skip
                except CvmConflict:
                    # A retry of this task: the job of this run was submitted before (with another nonce).
                    job = client.job(job_id)
                    self.log.info("job %s of run %s was submitted before; waiting for it", job_id, run)
                except CvmRequestRejected as exc:
                    if spec.contract is None or exc.term is None:
                        raise
                    self._refused(run, spec.contract.digest, exc)
                except CvmAttestationRefused as exc:
                    if spec.contract is None:
                        raise
                    self._refused(run, spec.contract.digest, exc)
        if self.deferrable and not job.state.finished:
            self.defer(
                trigger=TrainingJobTrigger(self.cvm_conn_id, job_id, self.poll_interval),
                method_name="execute_complete",
            )
        return self._finish(self._wait(job_id, job))

    def _refused(self, run: str, digest: str, exc: CvmRequestRejected | CvmAttestationRefused) -> None:
        """The TEE refused the job under contract ``digest``: recorded in the run's audit log, then the task fails
        without retry (the same job would be refused again) naming the term."""
        from securetrain.airflow.audit import record_events  # noqa: PLC0415 - keeps DAG parsing light
        from securetrain.core.audit.events import AuditEvent, EventKind, EventSource  # noqa: PLC0415

        term = exc.term if isinstance(exc, CvmRequestRejected) else None
        event = AuditEvent.now(EventKind.GOVERNANCE, EventSource.AIRFLOW, run_id=run, details={
            "outcome": "job refused", "contract": digest, "term": term, "status": exc.status, "message": str(exc)})  # fmt: skip
        try:
            with SecureStorageHook(self.storage_conn_id).blob_store() as store:
                record_events(store, run, [event])
        except SecuretrainError as record_failure:
            # The refusal stands whether or not it could be recorded; the audit stage records the task's failure.
            self.log.error("the refusal could not be recorded in the audit log of run %s: %s", run, record_failure)
        what = f"breaks the contract's term {term}" if term else "names a contract not in force"
        raise SecurityCheckFailed(f"attested training: the TEE refused the job, which {what} (contract {digest}): {exc}")

    def _wait(self, job_id: str, job: JobView) -> JobView:
        """The non-deferrable path: poll in the worker."""
        reported = 0
        with ConfidentialVmHook(self.cvm_conn_id).get_conn() as client:
            while not job.state.finished:
                time.sleep(self.poll_interval)
                job = client.job(job_id)
                for line in progress_lines(job, reported):
                    self.log.info("%s", line)
                reported = len(job.history)
        return job

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] == "error":
            if event.get("security_violation"):
                raise SecurityCheckFailed(f"attested training: {event['message']}")
            raise AirflowException(f"attested training: lost the job: {event['message']}")
        return self._finish(JobView.model_validate(event["job"]))

    def _finish(self, job: JobView) -> dict[str, Any]:
        if job.state is JobState.FAILED:
            error = job.error
            reason = f"{error.code}: {error.message}" if error is not None else "the agent recorded no error"
            text = f"the training job {job.job_id} failed: {reason}"
            if job.validation:
                text += f" (data validation: {job.validation.get('statistics')})"
            # A failed job stays failed under this run id: retrying the task would only find it again.
            raise SecurityCheckFailed(text) if error is not None and error.security_violation else AirflowFailException(text)
        if job.state is JobState.CANCELLED:
            raise AirflowFailException(f"the training job {job.job_id} was cancelled")
        result = job.result
        if result is None:
            raise AirflowFailException(f"the training job {job.job_id} succeeded but the agent reports no result")
        with fail_closed("attested training"):
            attestation = self._job_attestation(job)
            with SecureStorageHook(self.storage_conn_id).blob_store() as store:
                checkpoints = sorted(info.name for info in store.list_blobs(CHECKPOINTS_CONTAINER, job.checkpoints.prefix))
        self.log.info("job %s succeeded: %d epochs on %s in %s; metrics %s", job.job_id, job.epoch, result.device,
                      result.tee_type, job.metrics)  # fmt: skip
        return TrainingStageResult(
            job_id=job.job_id,
            run_id=job.run_id,
            state=job.state,
            attestation=attestation,
            key_release=job.key_release,
            epochs=job.epoch,
            metrics=job.metrics,
            history=job.history,
            validation=job.validation,
            model=result.model,
            model_blob=f"{result.model.container}/{result.model.blob}",
            checkpoints=tuple(f"{CHECKPOINTS_CONTAINER}/{name}" for name in checkpoints),
            device=result.device,
            tee_type=result.tee_type,
            transitions=job.transitions,
            # The TEE's signed statement about the model and the token that names its key (docs/models.md).
            provenance=result.provenance,
            # Left out, not null, where there are none: a run without a contract returns what it always did.
            **({"privacy": result.privacy} if result.privacy is not None else {}),
            **({"recipients": result.recipients} if result.recipients else {}),
        ).model_dump(mode="json")

    def _job_attestation(self, job: JobView) -> dict[str, Any]:
        """Claims of the token the job ran under, validated here; a fresh challenge if that token is gone.

        The agent serves its latest token: another job's once it moved on, and expired after a long wait.
        The challenge is validated just as strictly, so falling back to it never accepts less.
        """
        policy = KeyVaultHook(self.keyvault_conn_id).release_policy(self.kek_id)
        cvm, attestation = ConfidentialVmHook(self.cvm_conn_id), AttestationHook(self.attestation_conn_id)
        with cvm.get_conn() as client:
            latest = client.attestation()
        if latest.job_id == job.job_id:
            try:
                return claims_summary(attestation.validate(latest.token, policy=policy).claims)
            except TokenRejected as exc:
                self.log.info("the job's token no longer validates (%s); challenging the TEE afresh", exc)
        if self.contract:
            # The TEE's answer to a bare nonce enforces no contract: it is held to the contract's workloads.
            policy = challenge_policy(self.kek_id, self.contract, keyvault_conn_id=self.keyvault_conn_id,
                                      storage_conn_id=self.storage_conn_id)  # fmt: skip
        return attest_now(cvm, attestation, policy)
