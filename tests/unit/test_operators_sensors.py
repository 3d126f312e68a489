"""The sensors against the local stack's TEE: AttestationStatusSensor (Airflow validating the TEE's
attestation itself) and EnclaveHealthSensor (the enclave watched while the run's job trains), each deferred
to its trigger and finished in execute_complete with every event kind, and poked in the worker."""

from __future__ import annotations

import datetime

import pytest

from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from securetrain.airflow.failures import SecurityCheckFailed
from securetrain.airflow.locations import job_run_id
from securetrain.airflow.sensors import AttestationStatusSensor, EnclaveHealthSensor
from securetrain.airflow.triggers import AttestationStatusTrigger, EnclaveHealthTrigger
from securetrain.core.contracts.job_spec import job_id_for_run
from tests.stages import Stages, first_event, job_end_state, new_run_id, task_context

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.stage_fixtures"]

TEE = "sev-snp-simulated"


@pytest.fixture(scope="module")
def trained(airflow_env, dataset_ref) -> Stages:
    """A run whose job has trained to its end."""
    stages = Stages(dataset_ref)
    stages.through_training()
    return stages


def _deferral(operator, context) -> TaskDeferred:
    try:
        operator.execute(context)
    except TaskDeferred as deferred:
        return deferred
    raise AssertionError("execute() did not defer")


# AttestationStatusSensor


def test_attestation_deferred_validates_the_claims_in_execute_complete(local_stack, trained) -> None:
    kek_id = trained.results["prepare_environment"]["kek_id"]
    sensor = AttestationStatusSensor(task_id="attestation_status", kek_id=kek_id, deferrable=True, poke_interval=1)
    deferred = _deferral(sensor, task_context(new_run_id()))
    assert deferred.method_name == "execute_complete" and deferred.timeout == datetime.timedelta(minutes=15)
    assert isinstance(deferred.trigger, AttestationStatusTrigger)
    assert deferred.trigger.serialize()[1] == {"cvm_conn_id": "securetrain_cvm", "attestation_conn_id": "securetrain_attestation",
                                               "keyvault_conn_id": "securetrain_keyvault", "kek_id": kek_id,
                                               "poll_interval": 1, "contract": None,
                                               "storage_conn_id": "securetrain_storage"}  # fmt: skip
    event = first_event(deferred.trigger, 60)
    assert event is not None and event.payload["status"] == "done"
    claims = sensor.execute_complete(task_context(new_run_id()), event.payload)
    assert claims["x-ms-sevsnpvm-hostdata"] == local_stack.env["SECURETRAIN_CVM_HOST_DATA"]
    assert claims["x-ms-attestation-type"] == "sevsnpvm"


def test_attestation_poked_in_the_worker_returns_the_claims(local_stack, trained) -> None:
    # What Stages.attestation_status did for the trained run: execute() in poke mode, not deferred.
    claims = trained.results["attestation_status"]
    assert claims["x-ms-sevsnpvm-launchmeasurement"] == local_stack.env["SECURETRAIN_CVM_LAUNCH_MEASUREMENT"]


def test_an_agent_whose_certificate_does_not_verify_fails_the_attestation_at_once(trained, other_ca_cvm_conn_id) -> None:
    kek_id = trained.results["prepare_environment"]["kek_id"]
    sensor = AttestationStatusSensor(task_id="attestation_status", kek_id=kek_id, cvm_conn_id=other_ca_cvm_conn_id,
                                     deferrable=True)  # fmt: skip
    event = first_event(_deferral(sensor, task_context(new_run_id())).trigger, 60)
    assert event is not None and event.payload["status"] == "error" and event.payload["security_violation"]
    with pytest.raises(SecurityCheckFailed, match="attestation status: CvmTlsError"):
        sensor.execute_complete(task_context(new_run_id()), event.payload)
    with pytest.raises(SecurityCheckFailed, match=r"attestation status: security check failed \(CvmTlsError\)"):
        sensor.poke(task_context(new_run_id()))


def test_an_agent_not_up_yet_is_asked_again_not_failed(trained, unreachable_cvm_conn_id) -> None:
    # A long poll interval: after the first attempt the trigger is asleep (cancelled at once), not mid-request.
    trigger = AttestationStatusTrigger(unreachable_cvm_conn_id, "securetrain_attestation", "securetrain_keyvault",
                                       trained.results["prepare_environment"]["kek_id"], poll_interval=60)  # fmt: skip
    # The client's bounded retries end after about 7 s with CvmUnreachable, not a security violation: the trigger
    # waits to ask again instead of firing (an error event would fail the task).
    assert first_event(trigger, 10) is None


# EnclaveHealthSensor


def test_health_deferred_to_the_trigger_of_the_run_s_job(trained) -> None:
    sensor = EnclaveHealthSensor(task_id="enclave_health", expected_tee=TEE, deferrable=True)
    deferred = _deferral(sensor, trained.context())
    assert deferred.method_name == "execute_complete" and deferred.timeout == datetime.timedelta(hours=24)
    assert isinstance(deferred.trigger, EnclaveHealthTrigger)
    assert deferred.trigger.serialize()[1] == {
        "cvm_conn_id": "securetrain_cvm", "job_id": job_id_for_run(job_run_id("secure_training", trained.run_id)),
        "expected_tee": TEE, "max_attestation_age_s": 3600, "poll_interval": 5,
    }  # fmt: skip


def test_health_of_a_job_that_finished_cleanly_succeeds(trained) -> None:
    sensor = EnclaveHealthSensor(task_id="enclave_health", expected_tee=TEE, deferrable=True, poke_interval=0.1)
    event = first_event(_deferral(sensor, trained.context()).trigger, 60)
    assert event is not None and event.payload == {"status": "done", "job_state": "succeeded"}
    assert sensor.execute_complete(trained.context(), event.payload) is None
    assert sensor.poke(trained.context()) is True


def test_health_waits_for_a_job_not_submitted_yet(trained) -> None:
    context = task_context(new_run_id())
    sensor = EnclaveHealthSensor(task_id="enclave_health", expected_tee=TEE, deferrable=True, poke_interval=0.1)
    assert first_event(_deferral(sensor, context).trigger, 2) is None
    assert sensor.poke(context) is False


def test_a_security_event_fails_the_task_and_cancels_the_running_job(trained) -> None:
    stages = Stages(trained.dataset_ref)
    stages.results = {task_id: trained.results[task_id] for task_id in ("prepare_environment", "check_data_security")}
    training = stages.training_operator(hyperparameters={"epochs": 50, "batch_size": 8, "learning_rate": 0.01, "seed": 7})
    job_id = _deferral(training, stages.context()).trigger.job_id  # submitted; training
    # The agent says sev-snp-simulated; a run that expects another TEE treats that as a security event.
    sensor = EnclaveHealthSensor(task_id="enclave_health", expected_tee="tdx", deferrable=True, poke_interval=0.1)
    event = first_event(_deferral(sensor, stages.context()).trigger, 60)
    assert event is not None and event.payload["status"] == "security_event"
    assert "the agent reports TEE 'sev-snp-simulated', not 'tdx'" in event.payload["message"]
    with pytest.raises(SecurityCheckFailed, match="enclave health: the agent reports TEE"):
        sensor.execute_complete(stages.context(), event.payload)
    assert job_end_state(job_id) == "cancelled"
    with pytest.raises(SecurityCheckFailed, match="enclave health: the agent reports TEE"):
        sensor.poke(stages.context())


def test_health_through_an_agent_whose_certificate_does_not_verify_fails_without_retry(trained, other_ca_cvm_conn_id) -> None:
    sensor = EnclaveHealthSensor(task_id="enclave_health", expected_tee=TEE, cvm_conn_id=other_ca_cvm_conn_id,
                                 deferrable=True)  # fmt: skip
    event = first_event(_deferral(sensor, trained.context()).trigger, 60)
    assert event is not None and event.payload["status"] == "error" and event.payload["security_violation"]
    with pytest.raises(SecurityCheckFailed, match="enclave health: CvmTlsError"):
        sensor.execute_complete(trained.context(), event.payload)


def test_health_through_an_unreachable_agent_fails_for_a_retry(trained, unreachable_cvm_conn_id) -> None:
    sensor = EnclaveHealthSensor(task_id="enclave_health", expected_tee=TEE, cvm_conn_id=unreachable_cvm_conn_id,
                                 deferrable=True)  # fmt: skip
    event = first_event(_deferral(sensor, trained.context()).trigger, 60)
    assert event is not None and event.payload["status"] == "error" and not event.payload["security_violation"]
    with pytest.raises(AirflowException, match="enclave health: CvmUnreachable") as failure:
        sensor.execute_complete(trained.context(), event.payload)
    assert not isinstance(failure.value, AirflowFailException)
