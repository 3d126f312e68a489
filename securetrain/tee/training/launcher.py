"""The launcher of a data-parallel training group: after the agent's one attestation and key release, it starts
``SECURETRAIN_TRAINING_WORKERS`` worker processes of the same measured code, hands each the job (and its survey
of a streamed dataset, done once here) over a pipe, relays the leader's progress and uploads to the agent, and
restarts the group from its newest checkpoint when a worker dies (docs/trainer.md, "Several workers in one TEE").
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from securetrain.core.contracts.training import (
    DataValidationFailed, JobKeys, ProgressSink, TrainingCancelled, TrainingResult, TrainingSpec,
)  # fmt: skip
from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.core.storage import BlobStore
from securetrain.tee.settings import WorkerSettings
from securetrain.tee.training.data import DataLimits, open_shard_headers
from securetrain.tee.training.frames import BrokenFrame, read_frame, write_frame
from securetrain.tee.training.handoff import Assignment, send_assignment
from securetrain.tee.training.lanes import Lanes
from securetrain.tee.training.stream import ShardStream
from securetrain.tee.training.survey import Survey, survey

log = logging.getLogger(__name__)

# How often the launcher looks at the cancel event and its workers while no frame arrives.
_POLL_S = 0.2
# How long a worker whose pipe closed has to exit before it is killed.
_EXIT_GRACE_S = 10.0


class DataParallelRefused(ConfigurationError):
    """The job cannot train in several workers (DP-SGD)."""


class WorkersFailed(SecuretrainError):
    """The worker group kept losing workers: the restarts allowed are spent."""


class UploadRefused(SecurityViolation):
    """A worker asked to upload somewhere other than the job's checkpoints or model."""


def run_workers(spec: TrainingSpec, keys: JobKeys, store: BlobStore, progress: ProgressSink, cancel: threading.Event,
                settings: WorkerSettings, limits: DataLimits) -> TrainingResult:  # fmt: skip
    """Train ``spec`` in ``settings.training_workers`` worker processes; fail, cancel and resume as run_training."""
    count = settings.training_workers
    if spec.privacy is not None:
        # Opacus' DP-SGD clips and noises per process; the accountant's guarantee for a group is not what it
        # computes for one, so a DP-SGD job trains in one process.
        raise DataParallelRefused(
            f"DP-SGD trains in one process: this TEE is configured with {count} training workers "
            "(SECURETRAIN_TRAINING_WORKERS); run DP-SGD jobs on a TEE configured with 1"
        )
    # Read through the agent's store, which witnesses the headers; every worker must read the same files.
    opened = open_shard_headers(spec, keys, store)
    relay = _Relay(spec, store, progress)
    surveyed: Survey | None = None
    if limits.streams(sum(header.header.content.plaintext_length for header in opened)):
        # Refused here, before any worker starts: each worker streams whole lanes.
        lanes = Lanes.of(limits.lanes, spec.hyperparameters.batch_size, 0, count)
        # Surveyed once, here, rather than in every worker: a validation or content failure ends the job before any
        # worker starts, and the held-out sample stays in this process for the run, so a restarted group reuses it.
        surveyed = survey(spec, ShardStream(spec, store, limits, opened, lanes), cancel)
        progress.validation_done(surveyed.aggregates)
        relay.validated = True
    headers = tuple(header.header.to_bytes() for header in opened)
    threads = settings.training_worker_threads or max(1, (os.cpu_count() or 1) // count)
    for attempt in range(settings.training_restarts + 1):
        port = _free_port()
        log.info("run %s: starting %d training workers (%d threads each, rendezvous on 127.0.0.1:%d, attempt %d of %d)",
                 spec.run_id, count, threads, port, attempt + 1, settings.training_restarts + 1)  # fmt: skip
        assignments = [Assignment(spec, keys, headers, rank, count, port, settings.training_rendezvous_timeout_s, threads,
                                  limits, surveyed)
                       for rank in range(count)]  # fmt: skip
        crash = _Group(assignments, relay, cancel).run()
        if crash is None:
            assert relay.result is not None
            return relay.result
        log.warning("run %s: %s; %s", spec.run_id, crash,
                    "restarting the group from its newest checkpoint" if attempt < settings.training_restarts
                    else "no restarts left")  # fmt: skip
    raise WorkersFailed(f"run {spec.run_id}: the training workers failed {settings.training_restarts + 1} times; "
                        f"the last time: {crash}")  # fmt: skip


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class _Relay:
    """What the leader reports, passed on to the agent: progress, uploads (through the agent's store), result."""

    spec: TrainingSpec
    store: BlobStore
    progress: ProgressSink
    result: TrainingResult | None = None
    validated: bool = False

    def leader(self, message: dict[str, Any], data: bytes, answer: BinaryIO) -> None:
        if "upload" in message:
            self._upload(message["upload"], data)
        elif "epoch_done" in message:
            done = message["epoch_done"]
            # The agent's checks at an epoch's end (contract in force, attestation renewed) raise to stop the run;
            # the group waits for this answer before it reads the next epoch's data.
            self.progress.epoch_done(done["epoch"], done["step"], done["metrics"], done["checkpoint_blob"])
            write_frame(answer, {"ack": "epoch_done"})
        elif "validation_done" in message:
            # A restarted group validates again (in memory), and the launcher's survey validated a streamed dataset
            # already: the agent records the data's validation once.
            if not self.validated:
                self.progress.validation_done(message["validation_done"])
                self.validated = True
        elif "sealing_model" in message:
            self.progress.sealing_model()
        elif "result" in message:
            self.result = TrainingResult.model_validate(message["result"])
        else:
            raise BrokenFrame(f"the leading worker sent a frame the launcher does not know: {sorted(message)}")

    def _upload(self, upload: dict[str, Any], data: bytes) -> None:
        container, blob, options = upload["container"], upload["blob"], upload["options"]
        output, checkpoints = self.spec.output, self.spec.checkpoints
        is_model = (container, blob) == (output.container, output.blob)
        if not is_model and not (container == checkpoints.container and blob.startswith(checkpoints.prefix)):
            raise UploadRefused(f"a training worker asked to upload {container}/{blob}, which is neither this job's "
                                "model nor one of its checkpoints")  # fmt: skip
        overwrite = bool(options.get("overwrite", False))
        self.store.upload_stream(container, blob, io.BytesIO(data), length=len(data), overwrite=overwrite)


@dataclass
class _Worker:
    rank: int
    process: subprocess.Popen[bytes]
    #: The job pipe, kept open for the launcher's answers to the leader.
    answers: BinaryIO
    error: dict[str, Any] | None = None
    ended: bool = False


@dataclass
class _Group:
    """One attempt: the workers started, their frames read until every pipe ends, a crash stopping them all."""

    assignments: list[Assignment]
    relay: _Relay
    cancel: threading.Event
    workers: list[_Worker] = field(default_factory=list)
    frames: queue.Queue[tuple[int, tuple[dict[str, Any], bytes] | BaseException | None]] = field(default_factory=queue.Queue)

    def run(self) -> str | None:
        """None when the group finished; otherwise why it must be restarted. Raises a worker's own error
        (one of the product's, which a restart would only repeat), or TrainingCancelled."""
        try:
            # Every worker is started before any is handed its job: a job with a survey is larger than a pipe's
            # buffer, so handing it over waits until that worker has imported the trainer and reads it; started
            # one after another, the workers would import one after another.
            for assignment in self.assignments:
                self.workers.append(self._start(assignment.rank))
            for worker, assignment in zip(self.workers, self.assignments, strict=True):
                self._hand_over(worker, assignment)
            while not all(worker.ended for worker in self.workers):
                if self.cancel.is_set():
                    raise TrainingCancelled("cancelled: the training workers were stopped; the last checkpoint is intact")
                try:
                    rank, frame = self.frames.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                crash = self._handle(self.workers[rank], frame)
                if crash is not None:
                    return crash
            if self.relay.result is None:
                return "the leading worker ended without a result"
            return None
        finally:
            self._stop()

    def _start(self, rank: int) -> _Worker:
        job_read, job_write = os.pipe()
        report_read, report_write = os.pipe()
        try:
            # A new interpreter running the same measured code (never a fork of this threaded process). Only the
            # pipes' descriptor numbers are on its command line; the job goes through the pipe.
            process = subprocess.Popen(
                [sys.executable, "-m", "securetrain.tee.training.worker", str(job_read), str(report_write)],
                pass_fds=(job_read, report_write), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            os.close(job_read)
            os.close(report_write)
        worker = _Worker(rank, process, io.open(job_write, "wb", closefd=True))
        reports = io.open(report_read, "rb", closefd=True)
        threading.Thread(target=self._read, args=(rank, reports), daemon=True, name=f"training-worker-{rank}").start()
        return worker

    @staticmethod
    def _hand_over(worker: _Worker, assignment: Assignment) -> None:
        try:
            send_assignment(worker.answers, assignment)
        except BrokenPipeError:
            pass  # the worker died at once: its exit is seen through its report pipe

    def _read(self, rank: int, reports: BinaryIO) -> None:
        with reports:
            try:
                while (frame := read_frame(reports)) is not None:
                    self.frames.put((rank, frame))
            except (BrokenFrame, OSError) as exc:
                self.frames.put((rank, exc))
            self.frames.put((rank, None))

    def _handle(self, worker: _Worker, frame: tuple[dict[str, Any], bytes] | BaseException | None) -> str | None:
        if isinstance(frame, BaseException):
            return f"worker {worker.rank}'s report pipe broke: {frame}"
        if frame is not None:
            message, data = frame
            if "error" in message:
                worker.error = message["error"]
            elif worker.rank == 0:
                try:
                    self.relay.leader(message, data, worker.answers)
                except BrokenPipeError:
                    return "the leading worker stopped reading its answers"
            return None
        worker.ended = True
        try:
            code = worker.process.wait(timeout=_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            return f"worker {worker.rank} closed its reports but did not exit"
        if code == 0:
            return None
        if worker.error is not None and worker.error.get("domain"):
            raise _product_error(worker.error)
        reason = f"{worker.error['type']}: {worker.error['message']}" if worker.error else f"exit status {code}"
        return f"training worker {worker.rank} failed ({reason})"

    def _stop(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
        for worker in self.workers:
            worker.process.wait()
            worker.answers.close()


def _product_error(error: dict[str, Any]) -> SecuretrainError:
    """The product's exception a worker raised, rebuilt in the agent (which reports each kind its own way)."""
    module, _, name = str(error["type"]).rpartition(".")
    message = str(error["message"])
    kind: Any = None
    if module.startswith("securetrain."):
        kind = getattr(importlib.import_module(module), name, None)
    if isinstance(kind, type) and issubclass(kind, DataValidationFailed):
        return kind(message, error.get("aggregates", {}))
    if isinstance(kind, type) and issubclass(kind, SecuretrainError):
        try:
            return kind(message)
        except TypeError:
            pass
    return WorkersFailed(f"a training worker failed: {error['type']}: {message}")
