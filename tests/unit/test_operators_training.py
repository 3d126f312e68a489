"""Stage 3, AttestedTrainingOperator against the local stack's TEE: deferred to its trigger and finished in
execute_complete, retried (the run's job found again), polled in the worker; and each event kind the trigger
fires, each from a real cause: a lost job, an agent whose certificate does not verify, a job the TEE failed
for a security reason, a job whose data failed validation, a cancelled job."""

from __future__ import annotations

import io
import json

import pytest

from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from securetrain.airflow.failures import SecurityCheckFailed
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.locations import CHECKPOINTS_CONTAINER, MODELS_CONTAINER, job_run_id, model_output_blob
from securetrain.airflow.triggers import TrainingJobTrigger
from securetrain.core.contracts.job_spec import job_id_for_run
from securetrain.core.onboarding import DatasetManifest
from tests.stages import Stages, first_event

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.stage_fixtures"]

#: Longest wait for a one-epoch job, on a loaded machine.
JOB_TIMEOUT_S = 300
RESULT_KEYS = {"job_id", "run_id", "state", "attestation", "key_release", "epochs", "metrics", "history", "validation",
               "model", "model_blob", "checkpoints", "device", "tee_type", "transitions", "provenance"}  # fmt: skip


@pytest.fixture(scope="module")
def prepared(airflow_env, dataset_ref) -> Stages:
    """A run whose environment and data check have passed: what training starts from."""
    stages = Stages(dataset_ref)
    stages.prepare_environment()
    stages.check_data_security()
    return stages


def _for_run(prepared: Stages, run_id: str) -> Stages:
    """Another DAG run with the same environment and data check (a job of its own)."""
    stages = Stages(prepared.dataset_ref, run_id)
    stages.results = {task_id: prepared.results[task_id] for task_id in ("prepare_environment", "check_data_security")}
    return stages


def _deferred(stages: Stages, **overrides) -> TrainingJobTrigger:
    """Run execute() to its deferral; the trigger it hands to the triggerer."""
    try:
        stages.training_operator(**overrides).execute(stages.context())
    except TaskDeferred as deferred:
        assert deferred.method_name == "execute_complete"
        return deferred.trigger
    raise AssertionError("execute() did not defer")


@pytest.fixture(scope="module")
def deferred_run(prepared) -> tuple[Stages, TrainingJobTrigger, dict]:
    """The run trained the deferred way: execute → trigger → execute_complete; the run, trigger and result."""
    trigger = _deferred(prepared)
    event = first_event(trigger, JOB_TIMEOUT_S)
    assert event is not None and event.payload["status"] == "done", event
    result = prepared.training_operator().execute_complete(prepared.context(), event.payload)
    return prepared, trigger, result


def test_execute_submits_the_job_and_defers_to_the_training_trigger(deferred_run) -> None:
    stages, trigger, _ = deferred_run
    job_id = job_id_for_run(job_run_id("secure_training", stages.run_id))
    assert trigger.serialize() == ("securetrain.airflow.triggers.TrainingJobTrigger",
                                   {"cvm_conn_id": "securetrain_cvm", "job_id": job_id, "poll_interval": 0.2,
                                    "reported_epochs": 0})  # fmt: skip


def test_execute_complete_returns_the_validated_attestation_and_the_job_s_results(local_stack, deferred_run) -> None:
    stages, trigger, result = deferred_run
    run = job_run_id("secure_training", stages.run_id)
    assert set(result) == RESULT_KEYS
    assert result["job_id"] == trigger.job_id and result["run_id"] == run and result["state"] == "succeeded"
    assert result["attestation"]["x-ms-sevsnpvm-hostdata"] == local_stack.env["SECURETRAIN_CVM_HOST_DATA"]
    assert result["attestation"]["x-ms-sevsnpvm-launchmeasurement"] == local_stack.env["SECURETRAIN_CVM_LAUNCH_MEASUREMENT"]
    assert not any(isinstance(value, str) and value.startswith("eyJ") for value in result["attestation"].values())  # no JWT
    assert result["key_release"]["kek_id"] == stages.results["prepare_environment"]["kek_id"]
    assert result["epochs"] == 1 and [entry["epoch"] for entry in result["history"]] == [1]
    assert result["model_blob"] == f"{MODELS_CONTAINER}/{model_output_blob(run)}"
    assert result["checkpoints"] and all(name.startswith(f"{CHECKPOINTS_CONTAINER}/{run}/") for name in result["checkpoints"])
    assert result["tee_type"] == "sev-snp-simulated" and result["provenance"]
    assert json.loads(json.dumps(result)) == result  # an XCom value: JSON as it is


def test_a_retried_task_finds_the_job_of_its_run_instead_of_starting_another(deferred_run) -> None:
    stages, trigger, result = deferred_run
    # A retry sends the spec again with a fresh nonce: the agent refuses it (409), the operator takes the job it
    # has for the run, already finished, and returns without deferring.
    again = stages.training_operator().execute(stages.context())
    assert again["job_id"] == result["job_id"] and again["model_blob"] == result["model_blob"]


def test_not_deferrable_the_operator_polls_the_job_in_the_worker(prepared) -> None:
    stages = _for_run(prepared, f"{prepared.run_id}_polled")
    result = stages.training_operator(deferrable=False).execute(stages.context())
    assert result["state"] == "succeeded" and result["epochs"] == 1
    assert result["job_id"] == job_id_for_run(job_run_id("secure_training", stages.run_id))


def test_a_lost_job_fails_the_task_for_a_retry(prepared) -> None:
    event = first_event(TrainingJobTrigger("securetrain_cvm", "0" * 32, 0.2), 60)
    assert event is not None and event.payload["status"] == "error" and not event.payload["security_violation"]
    with pytest.raises(AirflowException, match="attested training: lost the job: CvmJobNotFound") as failure:
        prepared.training_operator().execute_complete(prepared.context(), event.payload)
    assert not isinstance(failure.value, AirflowFailException)  # retried: the agent may come back


def test_an_agent_whose_certificate_does_not_verify_fails_the_task_without_retry(prepared, other_ca_cvm_conn_id) -> None:
    event = first_event(TrainingJobTrigger(other_ca_cvm_conn_id, "0" * 32, 0.2), 60)
    assert event is not None and event.payload["status"] == "error" and event.payload["security_violation"]
    with pytest.raises(SecurityCheckFailed, match="attested training: CvmTlsError"):
        prepared.training_operator().execute_complete(prepared.context(), event.payload)


def _finished_job(stages: Stages, **overrides) -> dict:
    trigger = _deferred(stages, **overrides)
    event = first_event(trigger, JOB_TIMEOUT_S)
    assert event is not None and event.payload["status"] == "done", event
    return event.payload


def test_a_job_the_tee_failed_for_a_security_reason_fails_the_task_without_retry(prepared, store) -> None:
    stages = _for_run(prepared, f"{prepared.run_id}_forged")
    # Hostile storage: the owner-signed manifest with one digest changed, under a version of its own.
    (job_dataset,) = prepared.results["check_data_security"]["job_datasets"]
    body = io.BytesIO()
    store.download_to(job_dataset["container"], job_dataset["manifest"], body)
    manifest = json.loads(body.getvalue())
    manifest["shards"][0]["plaintext_sha256"] = "0" * 64
    forged = DatasetManifest.blob_name(manifest["dataset_id"], f"{manifest['version']}-forged")
    data = json.dumps(manifest).encode()
    store.upload_stream(job_dataset["container"], forged, io.BytesIO(data), length=len(data), overwrite=True)
    event = _finished_job(stages, datasets=[{"container": job_dataset["container"], "manifest": forged}])
    assert event["job"]["state"] == "failed" and event["job"]["error"]["security_violation"]
    with pytest.raises(SecurityCheckFailed, match=f"the training job {event['job']['job_id']} failed"):
        stages.training_operator().execute_complete(stages.context(), event)


def test_a_job_whose_data_failed_validation_fails_the_task_with_the_aggregates(prepared) -> None:
    stages = _for_run(prepared, f"{prepared.run_id}_invalid")
    suite = {"name": "impossible", "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [7]}}]}  # fmt: skip
    event = _finished_job(stages, expectation_suite=suite)
    assert event["job"]["state"] == "failed" and not event["job"]["error"]["security_violation"]
    with pytest.raises(AirflowFailException, match=r"DataValidationFailed: .*\(data validation: ") as failure:
        stages.training_operator().execute_complete(stages.context(), event)
    assert not isinstance(failure.value, SecurityCheckFailed)


def test_a_cancelled_job_fails_the_task(prepared) -> None:
    stages = _for_run(prepared, f"{prepared.run_id}_cancelled")
    trigger = _deferred(stages, hyperparameters={"epochs": 50, "batch_size": 8, "learning_rate": 0.01, "seed": 7})
    with ConfidentialVmHook().get_conn() as client:
        client.cancel(trigger.job_id)
    event = first_event(trigger, JOB_TIMEOUT_S)
    assert event is not None and event.payload["job"]["state"] == "cancelled"
    with pytest.raises(AirflowFailException, match=f"the training job {trigger.job_id} was cancelled"):
        stages.training_operator().execute_complete(stages.context(), event.payload)
