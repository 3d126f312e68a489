"""Data-parallel training in several worker processes against Azurite: the same weights as one process within
the documented tolerance, each worker streaming only its lanes' shards, a killed worker survived, keys only
through the pipe, rendezvous that times out.

Workers sign in to storage as the TEE does (``tee_settings`` puts the TEE's environment in place); the job's
keys and spec reach them only through their pipe.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from cryptography.hazmat.primitives import serialization

from securetrain.core.contracts.training import DataValidationFailed, TrainingCancelled
from securetrain.core.datasets import bundled_table, to_parquet
from securetrain.tee.training import run_training
from securetrain.tee.training.frames import read_frame
from securetrain.tee.training.handoff import Assignment, send_assignment
from securetrain.tee.training.data import DataLimits, open_shard_headers
from securetrain.tee.training.lanes import LanesRefused
from securetrain.tee.training.launcher import DataParallelRefused, _free_port
from securetrain.tee.training.stream import shard_order
from tests.agent_process import AgentProcess
from tests.integration import test_streaming_run, test_training_run
from tests.integration.test_agent_job import job_spec
from tests.integration.test_dp_training_run import PRIVACY
from tests.integration.test_training_run import (
    RecordingProgress, checkpoint_names, open_model, run_id, training_spec, upload_sealed,
)
from tests.streamed_shards import LIMITS, ROWS, spec_for

pytestmark = pytest.mark.integration
store, keys = test_training_run.store, test_training_run.keys
breast_cancer, parquet_shards = test_training_run.breast_cancer, test_streaming_run.parquet_shards

#: Two workers sum each gradient in another order than one process: float32 rounding, nothing more.
RTOL, ATOL = 1e-4, 1e-5
#: Streamed in two lanes, windows of 3 shards: lane 0 holds two shards of each window, lane 1 one, so lane 1 runs
#: out half-way through each window and its worker takes the window's last steps with no rows.
LANES = dataclasses.replace(LIMITS, stream_budget_bytes=96 * 1024, window_shards=3, lanes=2)


def close(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> bool:
    return expected.keys() == actual.keys() and all(
        torch.allclose(expected[name], actual[name], rtol=RTOL, atol=ATOL) for name in expected
    )


def close_metrics(expected: Mapping[str, float], actual: Mapping[str, float]) -> bool:
    return expected.keys() == actual.keys() and all(abs(expected[k] - actual[k]) <= 1e-4 * max(1.0, abs(expected[k]))
                                                    for k in expected)  # fmt: skip


@pytest.fixture
def workers(tee_settings, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("SECURETRAIN_TRAINING_WORKERS", "2")
    monkeypatch.setenv("SECURETRAIN_TRAINING_WORKER_THREADS", "1")
    monkeypatch.setenv("SECURETRAIN_TRAINING_RENDEZVOUS_TIMEOUT_S", "60")
    return 2


def worker_pids() -> list[int]:
    """The training workers this test process started (its children running the worker module)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"securetrain.tee.training.worker" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


class KillAfterEpoch(RecordingProgress):
    """Records progress; after epoch ``epoch`` checks what the workers expose and kills the newest with SIGKILL."""

    def __init__(self, epoch: int, secrets: list[bytes]) -> None:
        super().__init__()
        self._epoch, self._secrets = epoch, secrets
        self.killed: int | None = None
        self.inspected = 0

    def epoch_done(self, epoch: int, step: int, metrics: Mapping[str, float], checkpoint_blob: str) -> None:
        super().epoch_done(epoch, step, metrics, checkpoint_blob)
        if epoch != self._epoch or self.killed is not None:
            return
        pids = worker_pids()
        assert len(pids) == 2
        for pid in pids:
            exposed = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
            assert not any(secret in exposed for secret in self._secrets)
            self.inspected += 1
        self.killed = pids[-1]
        os.kill(self.killed, signal.SIGKILL)


def test_two_workers_reach_the_single_process_weights_in_memory(store, keys, breast_cancer, tee_settings,
                                                               monkeypatch) -> None:  # fmt: skip
    # Batches of 61 rows split 30/31 between the workers: the gradient hook weights each worker's share.
    alone = training_spec(run_id(), breast_cancer, hyperparameters={"batch_size": 61})
    expected_result = run_training(alone, keys, store, RecordingProgress(), threading.Event())
    monkeypatch.setenv("SECURETRAIN_TRAINING_WORKERS", "2")
    monkeypatch.setenv("SECURETRAIN_TRAINING_WORKER_THREADS", "1")
    together = training_spec(run_id(), breast_cancer, hyperparameters={"batch_size": 61})
    progress = RecordingProgress()
    result = run_training(together, keys, store, progress, threading.Event())
    assert [call[0] for call in progress.calls] == ["validation_done", "epoch_done", "epoch_done", "epoch_done",
                                                    "sealing_model"]  # fmt: skip
    assert result.steps_completed == expected_result.steps_completed
    assert close_metrics(expected_result.metrics, result.metrics)
    assert close(open_model(store, keys, alone)[0], open_model(store, keys, together)[0])


def decrypted_by_worker(log_text: str) -> dict[int, Counter[str]]:
    """How many times each worker decrypted each shard, from the workers' logs."""
    reads: dict[int, Counter[str]] = {0: Counter(), 1: Counter()}
    for rank, blob in re.findall(r"worker (\d) \S+ INFO decrypted shard datasets/(\S+): \d+ rows", log_text):
        reads[int(rank)][blob] += 1
    return reads


def test_two_workers_streaming_their_own_lanes_reach_the_single_process_weights(
    store, keys, parquet_shards, tee_settings, monkeypatch, capfd, caplog
) -> None:
    alone = spec_for(parquet_shards)
    expected_result = run_training(alone, keys, store, RecordingProgress(), threading.Event(), limits=LANES)
    capfd.readouterr()
    monkeypatch.setenv("SECURETRAIN_TRAINING_WORKERS", "2")
    monkeypatch.setenv("SECURETRAIN_TRAINING_WORKER_THREADS", "1")
    together = spec_for(parquet_shards)
    progress = RecordingProgress()
    # Only the group's run is counted: where logging is at INFO already, the single process's reads were captured too.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="securetrain.tee.training"):
        result = run_training(together, keys, store, progress, threading.Event(), limits=LANES)
    assert [call[0] for call in progress.calls].count("validation_done") == 1
    # 4 windows of 2 x 160 rows in lane 0 (10 sub-batches of 32) and 160 in lane 1 (5 of 32) per epoch.
    assert result.steps_completed == expected_result.steps_completed == 2 * 4 * 10
    assert close_metrics(expected_result.metrics, result.metrics)
    (expected, alone_meta), (actual, together_meta) = open_model(store, keys, alone), open_model(store, keys, together)
    assert close(expected, actual)
    # The model says how its data was read: the same order (window, lanes) in one process and in two.
    assert json.loads(alone_meta["description"])["data_path"] == {"streamed": True, "workers": 1, "window_shards": 3,
                                                                  "lanes": 2}  # fmt: skip
    assert json.loads(together_meta["description"])["data_path"]["workers"] == 2

    # The launcher surveys every shard once; each epoch, a worker reads only the shards of its own lane (and no
    # survey of its own).
    surveyed = Counter(re.findall(r"decrypted shard datasets/(\S+): \d+ rows", caplog.text))
    assert surveyed == Counter(parquet_shards)
    workers_log = capfd.readouterr().err
    # What the workers log is what they did: the storage SDK's every request stays out of it.
    assert re.findall(r"worker \d azure\.\S+ INFO .*", workers_log)[:3] == []
    reads = decrypted_by_worker(workers_log)
    for rank in (0, 1):
        expected: Counter[str] = Counter()
        for epoch in (1, 2):
            order = shard_order(len(parquet_shards), together.hyperparameters.seed, epoch)
            windows = [order[start : start + 3] for start in range(0, len(order), 3)]
            expected.update(parquet_shards[index] for window in windows for position, index in enumerate(window)
                            if position % 2 == rank)  # fmt: skip
        assert reads[rank] == expected


def test_streaming_in_lanes_the_workers_cannot_split_is_refused_before_any_worker_starts(
    store, keys, parquet_shards, workers
) -> None:
    progress = RecordingProgress()
    with pytest.raises(LanesRefused, match="set SECURETRAIN_DATA_LANES to a multiple of SECURETRAIN_TRAINING_WORKERS"):
        run_training(spec_for(parquet_shards), keys, store, progress, threading.Event(), limits=LIMITS)
    assert progress.calls == [] and worker_pids() == []


def test_a_streamed_dataset_failing_its_suite_fails_before_any_worker_starts(store, keys, parquet_shards, workers,
                                                                           caplog) -> None:  # fmt: skip
    suite = {"name": "strict", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "f3", "max_value": 2.5}},
    ]}  # fmt: skip
    spec = spec_for(parquet_shards, expectation_suite=suite)
    progress = RecordingProgress()
    with caplog.at_level(logging.INFO, logger="securetrain.tee.training"), \
            pytest.raises(DataValidationFailed, match=r"expect_column_values_to_be_between\(f3\)") as err:
        run_training(spec, keys, store, progress, threading.Event(), limits=LANES)
    (result,) = err.value.aggregates["expectations"]
    assert result["element_count"] == len(parquet_shards) * ROWS and result["unexpected_count"] > 0
    assert progress.calls == [] and "training workers" not in caplog.text and checkpoint_names(store, spec) == []


@pytest.mark.slow
def test_a_worker_killed_mid_stream_is_restarted_from_the_checkpoint_to_the_same_weights(
    store, keys, parquet_shards, tee_settings, monkeypatch, caplog
) -> None:
    alone = spec_for(parquet_shards)
    expected_result = run_training(alone, keys, store, RecordingProgress(), threading.Event(), limits=LANES)
    monkeypatch.setenv("SECURETRAIN_TRAINING_WORKERS", "2")
    monkeypatch.setenv("SECURETRAIN_TRAINING_WORKER_THREADS", "1")
    together = spec_for(parquet_shards)
    secrets = [
        together.run_id.encode(),
        keys.kek_private.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()),
        keys.kek_private.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()),
    ]  # fmt: skip
    progress = KillAfterEpoch(1, secrets)
    caplog.clear()  # only the group's run: the single process's survey may have been captured too
    with caplog.at_level(logging.INFO, logger="securetrain.tee.training"):
        result = run_training(together, keys, store, progress, threading.Event(), limits=LANES)
    assert progress.killed is not None and progress.inspected == 2
    assert "restarting the group from its newest checkpoint" in caplog.text
    # The restarted group reuses the launcher's survey: every shard surveyed once in the run.
    assert Counter(re.findall(r"surveyed shard datasets/(\S+):", caplog.text)) == Counter(parquet_shards)
    assert result.steps_completed == expected_result.steps_completed
    assert close_metrics(expected_result.metrics, result.metrics)
    assert close(open_model(store, keys, alone)[0], open_model(store, keys, together)[0])
    assert worker_pids() == []


def test_a_cancel_stops_every_worker(store, keys, parquet_shards, workers) -> None:
    cancel = threading.Event()
    progress = RecordingProgress(cancel, cancel_after_epoch=1)
    with pytest.raises(TrainingCancelled, match="training workers were stopped"):
        run_training(spec_for(parquet_shards), keys, store, progress, cancel, limits=LANES)
    assert worker_pids() == []


def test_dp_sgd_is_refused_with_several_workers(store, keys, breast_cancer, workers) -> None:
    spec = training_spec(run_id(), breast_cancer, privacy=PRIVACY)
    with pytest.raises(DataParallelRefused, match="DP-SGD trains in one process"):
        run_training(spec, keys, store, RecordingProgress(), threading.Event())


def test_a_worker_that_cannot_meet_its_group_fails_within_its_timeout(store, keys, breast_cancer, tee_settings) -> None:
    spec = training_spec(run_id(), breast_cancer)
    headers = tuple(opened.header.to_bytes() for opened in open_shard_headers(spec, keys, store))
    # Rank 1 of 2, with nobody at the rendezvous port: it must give up after its 3 s, not wait for ever.
    job_read, job_write = os.pipe()
    report_read, report_write = os.pipe()
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "securetrain.tee.training.worker", str(job_read),
                                str(report_write)], pass_fds=(job_read, report_write))  # fmt: skip
    os.close(job_read)
    os.close(report_write)
    with io.open(job_write, "wb") as job:
        send_assignment(job, Assignment(spec, keys, headers, 1, 2, _free_port(), 3, 1, DataLimits()))
    with io.open(report_read, "rb") as reports:
        frame = read_frame(reports)
    assert process.wait(timeout=60) == 1
    assert frame is not None and frame[0]["error"]["domain"] is False
    assert time.monotonic() - started < 60


def test_workers_leave_no_plaintext_in_their_work_or_temp_dirs_or_storage(store, keys, workers, tmp_path,
                                                                          monkeypatch) -> None:  # fmt: skip
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    table = bundled_table("breast-cancer")
    table = table.append_column("note", pa.array([f"{marker}-{i}" for i in range(table.num_rows)]))
    plaintext = to_parquet(table)
    assert marker.encode() in plaintext  # the scan below can find it wherever the plaintext would land
    blob = f"marker-{uuid.uuid4().hex[:8]}/part-0.sealed"
    upload_sealed(store, keys, blob, plaintext)
    features = [name for name in table.column_names if name not in ("label", "note")]
    spec = training_spec(run_id(), [blob], columns={"features": features})
    work, temp = tmp_path / "work", tmp_path / "temp"
    work.mkdir(), temp.mkdir()
    # The workers inherit the working directory and TMPDIR.
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(temp))

    run_training(spec, keys, store, RecordingProgress(), threading.Event())

    needle = marker.encode()
    assert [path for path in tmp_path.rglob("*") if path.is_file() and needle in path.read_bytes()] == []
    outputs = [(spec.checkpoints.container, info.name) for info in store.list_blobs("checkpoints", spec.checkpoints.prefix)]
    outputs.append((spec.output.container, spec.output.blob))
    assert len(outputs) == 4  # three epochs' checkpoints and the model
    assert [name for container, name in outputs if needle in b"".join(store.download_chunks(container, name))] == []


@pytest.mark.slow
def test_an_agent_with_two_workers_completes_a_job_with_its_provenance(local_stack, dataset_ref, tmp_path) -> None:
    """The agent as the stack starts it, configured with two workers: one attestation and release, two workers,
    the witnessed model and checkpoints in the job's result."""
    agent = AgentProcess(local_stack, tmp_path, environment={"SECURETRAIN_TRAINING_WORKERS": "2",
                                                             "SECURETRAIN_TRAINING_WORKER_THREADS": "1"})  # fmt: skip
    job = agent.run_job(job_spec(local_stack, dataset_ref))
    assert job.state == "succeeded", job.error
    assert job.epoch == 3 and job.metrics["val_accuracy"] > 0.8
    assert job.result.provenance is not None
    assert "starting 2 training workers" in agent.log_path.read_text()


class ContractRevoked(Exception):
    pass


class RefusingAfterEpoch(RecordingProgress):
    """The agent's check at an epoch's end failing (a contract revoked meanwhile)."""

    def epoch_done(self, epoch: int, step: int, metrics: Mapping[str, float], checkpoint_blob: str) -> None:
        super().epoch_done(epoch, step, metrics, checkpoint_blob)
        raise ContractRevoked(f"revoked at the end of epoch {epoch}")


def test_the_group_waits_for_the_agents_check_at_each_epochs_end(store, keys, breast_cancer, workers) -> None:
    spec = training_spec(run_id(), breast_cancer)
    with pytest.raises(ContractRevoked, match="end of epoch 1"):
        run_training(spec, keys, store, RefusingAfterEpoch(), threading.Event())
    assert checkpoint_names(store, spec) == [f"{spec.checkpoints.prefix}epoch-0001.safetensors.sealed"]
    assert worker_pids() == []
