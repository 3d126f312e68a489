"""Each trigger survives the trip through Airflow's triggers table: serialize(), stored as the Trigger row
stores it (serialized, encrypted), its classpath imported, rebuilt from its kwargs, the same trigger.

What the triggers fire is tested with their operators against the local stack (test_operators_training.py,
test_operators_sensors.py)."""

from __future__ import annotations

import inspect

import pytest

from airflow.models.trigger import Trigger
from airflow.sdk.module_loading import import_string
from securetrain.airflow.triggers import AttestationStatusTrigger, EnclaveHealthTrigger, TrainingJobTrigger

KEK_ID = "https://vault.securetrain.test/keys/securetrain-kek/0123456789abcdef"
JOB_ID = "0123456789abcdef0123456789abcdef"

TRIGGERS = [
    TrainingJobTrigger("securetrain_cvm", JOB_ID, poll_interval=2.5, reported_epochs=3),
    AttestationStatusTrigger("securetrain_cvm", "securetrain_attestation", "securetrain_keyvault", KEK_ID, poll_interval=7.0),
    EnclaveHealthTrigger("securetrain_cvm", JOB_ID, expected_tee="sev-snp", max_attestation_age_s=600.0, poll_interval=4.0),
    EnclaveHealthTrigger("other_cvm", JOB_ID, expected_tee=None, max_attestation_age_s=3600, poll_interval=10.0),
]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda trigger: type(trigger).__name__)
def test_a_trigger_is_rebuilt_from_what_the_triggers_table_stores(trigger) -> None:
    classpath, kwargs = trigger.serialize()
    assert classpath == f"securetrain.airflow.triggers.{type(trigger).__name__}"
    stored = Trigger.from_object(trigger)  # what the triggerer reads back: serialized and encrypted kwargs
    assert stored.classpath == classpath and stored.kwargs == kwargs
    rebuilt = import_string(stored.classpath)(**stored.kwargs)
    assert type(rebuilt) is type(trigger)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert {name: getattr(rebuilt, name) for name in kwargs} == {name: getattr(trigger, name) for name in kwargs}


def test_every_argument_of_each_trigger_is_serialized() -> None:
    for trigger_type in (TrainingJobTrigger, AttestationStatusTrigger, EnclaveHealthTrigger):
        parameters = set(inspect.signature(trigger_type.__init__).parameters) - {"self"}
        trigger = next(t for t in TRIGGERS if type(t) is trigger_type)
        assert set(trigger.serialize()[1]) == parameters, trigger_type.__name__
