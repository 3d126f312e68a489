"""Stage 5, AuditOperator.execute() against the local stack: a run's events (its stages' results, the agent's
record of its job with the TEE's signed event log) recorded in its hash-chained log, verified as `securetrain
audit verify` does, and reported; a run that failed early audited too; a forged checkpoint in the log
reported as broken and the task failed."""

from __future__ import annotations

import io
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.airflow.audit import AuditOperator, audit_signing_key
from securetrain.airflow.failures import SecurityCheckFailed
from securetrain.airflow.locations import REPORTS_CONTAINER, job_run_id
from securetrain.airflow.model_management import ModelManagementOperator
from securetrain.core.audit.checkpoints import Checkpoint
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import BlobAuditStore
from securetrain.core.audit.store import AUDIT_CONTAINER
from securetrain.core.storage import BlobStore
from tests.stages import HYPERPARAMETERS, Stages

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.stage_fixtures"]


def _audit(stages: Stages) -> dict:
    return AuditOperator(task_id="audit").execute(stages.context())


def _report(store: BlobStore, stages: Stages) -> dict:
    body = io.BytesIO()
    store.download_to(REPORTS_CONTAINER, f"{job_run_id('secure_training', stages.run_id)}/audit.json", body)
    return json.loads(body.getvalue())


@pytest.fixture(scope="module")
def blob_store(local_stack):
    with BlobStore.from_settings(local_stack.settings()) as store:
        yield store


def test_a_trained_and_registered_run_is_recorded_verified_and_reported(airflow_env, dataset_ref, blob_store) -> None:
    stages = Stages(dataset_ref)
    stages.through_training()
    stages.results["register_model"] = ModelManagementOperator(
        task_id="register_model", model_name="stage-test-audit", training=stages.results["train"],
        data=stages.results["check_data_security"], environment=stages.results["prepare_environment"],
        hyperparameters=HYPERPARAMETERS,
    ).execute(stages.context())  # fmt: skip
    run = job_run_id("secure_training", stages.run_id)
    result = _audit(stages)
    assert set(result) == {"verdict", "entries", "head", "first_bad", "summary", "log", "report_blob", "run_report"}
    assert result["verdict"] == "verified" and result["first_bad"] is None
    assert result["log"] == f"{AUDIT_CONTAINER}/audit/{run}.jsonl"
    assert result["report_blob"] == f"{REPORTS_CONTAINER}/{run}/audit.json"
    assert result["run_report"] == f"{REPORTS_CONTAINER}/{run}/report.html"
    json.dumps(result)  # an XCom value: JSON as it is
    # The log as anyone checks it later: every entry covered by a checkpoint signed with the audit key.
    log = AuditLog(BlobAuditStore(blob_store.container_client(AUDIT_CONTAINER), run))
    verdict = log.verify(audit_signing_key().public_key())
    assert verdict.entries == result["entries"] and verdict.head_hash == result["head"]
    kinds = {str(entry.event.kind) for entry in log.entries()}
    # The pipeline's own events, the agent's record of the job, and what the TEE signed.
    assert {"run_started", "data_validated", "evidence_appraised", "model_registered", "job_event",
            "key_released", "model_sealed"} <= kinds  # fmt: skip
    report = _report(blob_store, stages)
    assert report["verdict"] == "verified" and report["dag_run"] == stages.run_id and report["events"]["key_released"] >= 1


@pytest.fixture(scope="module")
def failed_early(airflow_env, dataset_ref) -> Stages:
    """A run that failed after its data check: no job, no model."""
    stages = Stages(dataset_ref)
    stages.prepare_environment()
    stages.check_data_security()
    return stages


def test_a_run_that_failed_before_training_is_audited_too(failed_early, blob_store) -> None:
    result = _audit(failed_early)
    # Only what this run did: its window (from the run's start) holds no other run's Key Vault or attestation traffic.
    assert result["verdict"] == "verified" and result["entries"] == 2  # run_started, data_validated
    assert _report(blob_store, failed_early)["events"] == {"run_started": 1, "data_validated": 1}


def test_a_forged_checkpoint_is_reported_as_broken_and_fails_the_task(failed_early, blob_store) -> None:
    run = job_run_id("secure_training", failed_early.run_id)
    # Storage is untrusted: someone without the audit key appends a checkpoint of their own.
    forged = Checkpoint.sign(Ed25519PrivateKey.generate(), 0, "0" * 64)
    BlobAuditStore(blob_store.container_client(AUDIT_CONTAINER), run).append_checkpoint(forged.to_line())
    with pytest.raises(SecurityCheckFailed, match=f"audit: the audit log of run {run} does not verify"):
        _audit(failed_early)
    report = _report(blob_store, failed_early)  # written before the task failed
    assert report["verdict"] == "broken" and report["entries"] is None
