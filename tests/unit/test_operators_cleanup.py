"""Stage 6, CleanupOperator.execute() against the local stack: whatever happened before, the run's job is
stopped, its temporary blobs (checkpoints, sealed model output) deleted, the CVM released, and the cleanup
recorded in the run's audit log."""

from __future__ import annotations

import pytest

from airflow.sdk.exceptions import TaskDeferred
from securetrain.airflow.cleanup import CleanupOperator
from securetrain.airflow.locations import CHECKPOINTS_CONTAINER, MODELS_CONTAINER, checkpoint_prefix, job_run_id
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.contracts.job_spec import job_id_for_run
from securetrain.core.storage import BlobStore
from tests.stages import Stages, job_end_state, new_run_id, task_context

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.stage_fixtures"]


@pytest.fixture(scope="module")
def blob_store(local_stack):
    with BlobStore.from_settings(local_stack.settings()) as store:
        yield store


def _cleanup(context: dict) -> dict:
    return CleanupOperator(task_id="cleanup").execute(context)


def _recorded(blob_store: BlobStore, run_id: str) -> list[dict]:
    log = AuditLog(BlobAuditStore(blob_store.container_client(AUDIT_CONTAINER), job_run_id("secure_training", run_id)))
    return [entry.event.details for entry in log.entries() if str(entry.event.kind) == "cleanup_done"]


def test_a_run_that_never_reached_training_is_cleaned_up_and_recorded(local_stack, airflow_env, blob_store) -> None:
    run_id = new_run_id()
    result = _cleanup(task_context(run_id))
    assert result == {"job_cancelled": False, "deleted_blobs": 0,
                      "cvm": f"the local agent at {local_stack.env['SECURETRAIN_CVM_ENDPOINT']} keeps running "
                             "(it belongs to the local stack)"}  # fmt: skip
    assert _recorded(blob_store, run_id) == [result]


def test_a_trained_run_s_checkpoints_and_model_output_are_deleted(airflow_env, dataset_ref, blob_store) -> None:
    stages = Stages(dataset_ref)
    training = stages.through_training()["train"]
    prefix = checkpoint_prefix(job_run_id("secure_training", stages.run_id))
    result = _cleanup(stages.context())
    assert result["job_cancelled"] is False  # it had finished
    assert result["deleted_blobs"] == len(training["checkpoints"]) + 1  # and the sealed model output
    assert list(blob_store.list_blobs(CHECKPOINTS_CONTAINER, prefix)) == []
    assert list(blob_store.list_blobs(MODELS_CONTAINER, prefix)) == []


def test_a_job_still_training_is_cancelled(airflow_env, dataset_ref, blob_store) -> None:
    stages = Stages(dataset_ref)
    stages.prepare_environment()
    stages.check_data_security()
    long_job = stages.training_operator(hyperparameters={"epochs": 50, "batch_size": 8, "learning_rate": 0.01, "seed": 7})
    with pytest.raises(TaskDeferred):
        long_job.execute(stages.context())  # submitted; the task waits in the triggerer
    result = _cleanup(stages.context())
    assert result["job_cancelled"] is True
    job_id = job_id_for_run(job_run_id("secure_training", stages.run_id))
    assert job_end_state(job_id) == "cancelled"  # it stopped at its next safe point
    assert _recorded(blob_store, stages.run_id)[0]["job_cancelled"] is True
