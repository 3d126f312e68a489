"""Stage 5, audit: the run's security events into its hash-chained log, verified, and a report written.

The events: the stages' results, the agent's record of the job, the TEE's own signed event log verbatim, and the
Key Vault access and attestation issuance logs of the run's time window where the deployment exposes them as
files. The stage verifies the log as ``securetrain audit verify`` does (docs/audit.md). Trigger rule
``all_done``: a failed run is audited too (that is when it matters most).
"""

from __future__ import annotations

import datetime
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airflow.sdk import BaseOperator, Context, TriggerRule
from securetrain.airflow.failures import SecurityCheckFailed, fail_closed
from securetrain.airflow.hooks.attestation import AttestationHook
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.hooks.keyvault import KeyVaultHook
from securetrain.airflow.hooks.storage import SecureStorageHook
from securetrain.airflow.locations import REPORTS_CONTAINER, job_run_id
from securetrain.airflow.notifiers import deliver_alerts, load_alert_thresholds
from securetrain.airflow.settings import PipelineSettings
from securetrain.airflow.stage_results import read_result
from securetrain.core.alerts import evaluate
from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource, rfc3339_utc
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.sources import attestation_events, keyvault_events
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.audit.tee_log import TeeLogInvalid
from securetrain.core.audit.tee_log import audit_events as tee_audit_events
from securetrain.core.audit.trail import TrailVerdict, attested_head, verify_trail
from securetrain.core.contracts.jobs import JobView
from securetrain.core.contracts.stages import AuditResult, RegistrationResult
from securetrain.core.cvm_client import CvmJobNotFound
from securetrain.core.errors import SecurityViolation
from securetrain.core.model_provenance import published_keys, verify_attestation_token
from securetrain.core.model_registry import ModelRegistry
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.run_report import run_record, write_run_report
from securetrain.core.storage import BlobStore

_STAGES = ("prepare_environment", "check_data_security", "attestation_status", "train", "register_model")


def audit_signing_key() -> Ed25519PrivateKey:
    """The pipeline's audit signing key (``$SECURETRAIN_AUDIT_SIGNING_KEY``), made on first use."""
    return load_or_create_signing_key(PipelineSettings.load().required("audit_signing_key"))


def stage_events(run: str, results: Mapping[str, Any]) -> list[AuditEvent]:
    """What the pipeline's own stages established, from their results (task id -> its stage's model)."""
    now = rfc3339_utc(datetime.datetime.now(datetime.UTC))
    events = []
    if env := results.get("prepare_environment"):
        started = {"kek_id": env.kek_id, "release_policy_sha256": env.release_policy_sha256, "tee": env.tee,
                   "cvm_endpoint": env.cvm_endpoint}  # fmt: skip
        if env.contract is not None:
            started["contract"] = env.contract.model_dump(mode="json")
        events.append(AuditEvent(EventKind.RUN_STARTED, run, EventSource.PIPELINE, now, started))
    if data := results.get("check_data_security"):
        checked = {"check": "sealed dataset verified without decrypting", "dataset_id": data.dataset_id,
                   "version": data.version, "manifest": data.manifest_blob, "shards": data.shard_digests()}  # fmt: skip
        if data.manifests is not None:
            checked["manifests"] = [manifest.model_dump(mode="json") for manifest in data.manifests]
        events.append(AuditEvent(EventKind.DATA_VALIDATED, run, EventSource.PIPELINE, now, checked))
    if claims := results.get("attestation_status"):
        events.append(AuditEvent(EventKind.EVIDENCE_APPRAISED, run, EventSource.PIPELINE, now,
                                 {"check": "TEE attested for Airflow's nonce; token validated against the KEK's "
                                           "release policy", "claims": claims.model_dump(mode="json")}))  # fmt: skip
    if model := results.get("register_model"):
        events.append(AuditEvent(EventKind.MODEL_REGISTERED, run, EventSource.PIPELINE, now, model.model_dump(mode="json")))
    return events


def job_events(run: str, job: JobView) -> list[AuditEvent]:
    """The agent's record of the job: state changes and the error (unsigned), and the TEE's own event log
    (key release, validation, checkpoints, model: signed in the TEE), verbatim."""
    events = [AuditEvent(EventKind.JOB_EVENT, run, EventSource.TRAINER, t.time, {"job_id": job.job_id, "state": t.state.value})
              for t in job.transitions]  # fmt: skip
    if job.tee_log:
        events += tee_audit_events(job.tee_log)
    finished = job.transitions[-1].time if job.transitions else rfc3339_utc(datetime.datetime.now(datetime.UTC))
    if job.error is not None:
        # A security failure before the KEK was released is the TEE being refused its key (attestation or policy).
        refused = job.error.security_violation and job.key_release is None
        kind = EventKind.KEY_DENIED if refused else EventKind.JOB_EVENT
        events.append(AuditEvent(kind, run, EventSource.TRAINER, finished,
                                 {"job_id": job.job_id, "error": job.error.model_dump(mode="json")}))  # fmt: skip
    return events


def service_log_events(run: str, since: datetime.datetime, until: datetime.datetime, kek_id: str | None) -> list[AuditEvent]:
    """The Key Vault access log and the attestation issuance log for the run's window, where they are files."""
    settings = PipelineSettings.load()
    events: list[AuditEvent] = []
    if settings.keyvault_access_log is not None:
        names = [kek_id.split("/keys/", 1)[1].split("/", 1)[0]] if kek_id else None
        events += keyvault_events(settings.keyvault_access_log, run_id=run, since=since, until=until, key_names=names)
    if settings.attestation_log is not None:
        events += attestation_events(settings.attestation_log, run_id=run, since=since, until=until)
    return events


def record_events(store: BlobStore, run: str, events: Iterable[AuditEvent]) -> BlobAuditStore:
    """Append ``events`` to the run's audit log (checkpoint signed at the end); the log's store."""
    store.ensure_container(AUDIT_CONTAINER)
    audit_store = BlobAuditStore(store.container_client(AUDIT_CONTAINER), run)
    with AuditLog(audit_store, audit_signing_key()) as log:
        for event in events:
            log.record(event)
    return audit_store


class AuditOperator(BaseOperator):
    """Collects the run's events into its hash-chained audit log, verifies the chain, writes a report.

    Returns (XCom) an :class:`~securetrain.core.contracts.stages.AuditResult`; a broken chain fails the
    task (no retry) after the reports are written. The run's
    events are also evaluated for security alerts (``securetrain.core.alerts``), delivered by the notifiers.
    """

    ui_color = "#f4d6d6"

    def __init__(
        self,
        *,
        storage_conn_id: str = SecureStorageHook.default_conn_name,
        cvm_conn_id: str = ConfidentialVmHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.storage_conn_id = storage_conn_id
        self.cvm_conn_id = cvm_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from securetrain.airflow.listener import flush as flush_listener_events  # noqa: PLC0415
        from securetrain.core.contracts.job_spec import job_id_for_run  # noqa: PLC0415 - keeps DAG parsing light

        run = job_run_id(context["dag"].dag_id, context["run_id"])
        # The listener records this task's own "running" event on a thread of this process: let it land (and its
        # checkpoint be signed) before the log is read back and verified, or the verdict would see it half-written.
        if not flush_listener_events():
            self.log.warning("the listener's queued events are not all recorded yet; the log is verified as it is")
        pulled = {stage: context["ti"].xcom_pull(task_ids=stage) for stage in _STAGES}
        results = {stage: read_result(stage, value) for stage, value in pulled.items() if value is not None}
        with fail_closed("audit"):
            with ConfidentialVmHook(self.cvm_conn_id).get_conn() as client:
                try:
                    job = client.job(job_id_for_run(run))
                except CvmJobNotFound:
                    job = None
            since = context["dag_run"].start_date or datetime.datetime.now(datetime.UTC)
            until = datetime.datetime.now(datetime.UTC)
            kek_id = results["prepare_environment"].kek_id if "prepare_environment" in results else None
            events = stage_events(run, results) + (job_events(run, job) if job else [])
            events += service_log_events(run, since, until, kek_id)
            events.sort(key=lambda event: event.time)
            with SecureStorageHook(self.storage_conn_id).blob_store() as store:
                audit_store = record_events(store, run, events)
                try:
                    verdict = _verify(store, audit_store, kek_id, results.get("register_model"))
                    outcome = {"verdict": "verified", "entries": verdict.chain.entries, "head": verdict.chain.head_hash,
                               "first_bad": None, "summary": "; ".join(verdict.lines())}  # fmt: skip
                except SecurityViolation as exc:
                    outcome = {"verdict": "broken", "entries": None, "head": None, "first_bad": getattr(exc, "seq", None),
                               "summary": str(exc)}  # fmt: skip
                report_blob = f"{run}/audit.json"
                report = {"run": run, "dag_run": context["run_id"], "log": f"{AUDIT_CONTAINER}/audit/{run}.jsonl",
                          **outcome, "events": dict(Counter(str(event.kind) for event in events))}  # fmt: skip
                body = json.dumps(report, indent=2, sort_keys=True).encode()
                store.upload_stream(REPORTS_CONTAINER, report_blob, io.BytesIO(body), length=len(body), overwrite=True)
                # After the log is stored: a bad threshold setting then fails the task without losing events.
                alerts = evaluate(events, load_alert_thresholds(), run_id=run)
                record = run_record(store, run=run, dag_run_id=context["run_id"], audit=outcome, events=events, alerts=alerts,
                                    results={stage: result.model_dump(mode="json") for stage, result in results.items()})  # fmt: skip
                run_report = write_run_report(store, REPORTS_CONTAINER, record)
        deliver_alerts(alerts)
        self.log.info("run report: %s (%d alerts)", run_report, len(alerts))
        self.log.info("%s (%d events recorded this run); report %s/%s", outcome["summary"], len(events),
                      REPORTS_CONTAINER, report_blob)  # fmt: skip
        if outcome["verdict"] != "verified":
            raise SecurityCheckFailed(f"audit: the audit log of run {run} does not verify: {outcome['summary']}")
        result = AuditResult(**outcome, log=report["log"], report_blob=f"{REPORTS_CONTAINER}/{report_blob}", run_report=run_report)
        return result.model_dump(mode="json")


def _verify(
    store: BlobStore, audit_store: BlobAuditStore, kek_id: str | None, model: RegistrationResult | None
) -> TrailVerdict:
    """The run's log verified as ``securetrain audit verify`` does it: chain and checkpoints, the TEE's logs
    against tokens checked with the KEK's release policy and the attestation service's keys, and that the
    log holds the TEE events up to the head the registered model's statement names."""
    policy: ReleasePolicy | None = None

    def check_token(raw: str) -> Mapping[str, Any]:
        nonlocal policy
        if kek_id is None:
            raise TeeLogInvalid("the run's log holds TEE events, but the run names no KEK whose policy checks their tokens")
        policy = policy or KeyVaultHook().release_policy(kek_id)
        return verify_attestation_token(raw, policy, keys_for)

    keys_for = published_keys(AttestationHook().connection.tls_verify)
    anchors = []
    if model:
        version = ModelRegistry(store).get(model.name, model.version)
        anchors.append((f"model {version.name} version {version.version}",
                        attested_head(version.manifest.get("provenance") or {}, check_token)))  # fmt: skip
    return verify_trail(audit_store.read_all().lines, audit_store.read_checkpoints(), audit_signing_key().public_key(),
                        check_token=check_token, anchors=anchors)  # fmt: skip
