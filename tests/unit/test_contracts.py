"""The contracts between the zones: what the agent records and serves, what the stages hand each other."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from securetrain.core.contracts.job_spec import JobSpec
from securetrain.core.contracts.jobs import EpochRecord, JobState, JobView, KeyRelease, Transition
from securetrain.core.contracts.stages import TrainingStageResult
from securetrain.tee.agent.jobs import JobRecord, JobStore
from securetrain.tee.agent.metrics import RunnerMetrics
from tests.unit.test_job_spec import valid_spec


def record() -> JobRecord:
    spec = JobSpec.from_json(valid_spec())
    now = time.time()
    return JobRecord(
        job_id=spec.job_id, run_id=spec.run_id, spec=spec, state=JobState.TRAINING, epoch=1, step=9,
        metrics={"val_accuracy": 0.75}, history=(EpochRecord(epoch=1, step=9, val_accuracy=0.75),),
        key_release=KeyRelease(kek_id=spec.kek_id, released_at="2026-01-01T00:00:00.000Z"),
        transitions=(Transition(state=JobState.TRAINING, time="2026-01-01T00:00:01.000Z"),),
        attestation_sequence=2, created_at=now, updated_at=now,
    )  # fmt: skip


def test_a_job_record_reads_back_as_it_was_written(tmp_path) -> None:
    store = JobStore(tmp_path)
    store.save(record())
    (loaded,) = store.load_all()
    assert loaded == record().model_copy(update={"created_at": loaded.created_at, "updated_at": loaded.updated_at})
    assert loaded.spec.nonce == valid_spec()["nonce"] and loaded.attestation_sequence == 2


def test_the_job_view_shows_the_spec_locations_and_never_the_nonce() -> None:
    view = record().view()
    text = view.model_dump_json()
    assert valid_spec()["nonce"] not in text and "attestation_sequence" not in text
    assert view.output.blob == "run-1/model.sealed" and view.checkpoints.prefix == "run-1/"
    # What the client reads back from the wire is the same view.
    assert JobView.model_validate_json(text) == view


def test_an_epoch_is_one_flat_object_with_its_metrics_by_name() -> None:
    epoch = EpochRecord.model_validate({"epoch": 2, "step": 18, "train_loss": 0.5, "val_accuracy": 1})
    assert epoch.metrics == {"train_loss": 0.5, "val_accuracy": 1.0}
    assert epoch.model_dump(mode="json") == {"epoch": 2, "step": 18, "train_loss": 0.5, "val_accuracy": 1.0}
    with pytest.raises(ValidationError):
        EpochRecord.model_validate({"epoch": 2, "step": 18, "train_loss": "low"})


def test_the_job_state_ends_in_exactly_three_states() -> None:
    assert JobState.terminal() == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    assert not any(state.finished for state in (JobState.QUEUED, JobState.TRAINING, JobState.SEALING))


def test_a_stage_result_survives_the_xcom_json_round_trip() -> None:
    view = record().view()
    result = TrainingStageResult(
        job_id=view.job_id, run_id=view.run_id, state=view.state, attestation={"x-ms-attestation-type": "sevsnpvm"},
        key_release=view.key_release, epochs=view.epoch, metrics=view.metrics, history=view.history, validation=None,
        model=view.output, model_blob=f"{view.output.container}/{view.output.blob}", checkpoints=("checkpoints/a",),
        device="cpu", tee_type="sev-snp", transitions=view.transitions, provenance=None,
    )  # fmt: skip
    stored = result.model_dump(mode="json")
    assert stored["state"] == "training" and stored["history"] == [{"epoch": 1, "step": 9, "val_accuracy": 0.75}]
    assert TrainingStageResult.model_validate(stored) == result
    with pytest.raises(ValidationError):
        TrainingStageResult.model_validate({**stored, "surprise": 1})


def test_the_counters_count_every_increment_from_many_threads() -> None:
    metrics = RunnerMetrics()

    def count() -> None:
        for _ in range(5000):
            metrics.attestations.inc()
            metrics.jobs_finished.labels(JobState.FAILED.value).inc()

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = generate_latest(metrics.registry).decode()
    assert "securetrain_agent_attestations_total 40000.0" in text
    assert 'securetrain_agent_jobs_finished_total{state="failed"} 40000.0' in text
    assert 'securetrain_agent_jobs_finished_total{state="succeeded"} 0.0' in text
    assert "_created" not in text
