"""A data-parallel training worker: ``python -m securetrain.tee.training.worker IN_FD OUT_FD``.

The launcher starts it with two inherited pipe ends: ``IN_FD`` carries the job (keys, spec and the survey of a
streamed dataset, see :mod:`~securetrain.tee.training.handoff`), ``OUT_FD`` carries what the worker reports back
as frames: the leader's progress, the sealed checkpoints and model it uploads through the launcher (so the
agent witnesses them), its result, or any worker's error.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any, BinaryIO, NoReturn

import torch

from securetrain.core.contracts.training import DataValidationFailed, NullProgress
from securetrain.core.errors import SecuretrainError
from securetrain.core.process_logging import configure_logging
from securetrain.core.sealed import OpenedHeader
from securetrain.core.storage import BlobInfo, BlobStore
from securetrain.tee.settings import TeeSettings
from securetrain.tee.training import train_in_process
from securetrain.tee.training.data import ShardChanged, describe_shard, open_shard_headers
from securetrain.tee.training.frames import BrokenFrame, read_frame, write_frame
from securetrain.tee.training.group import DataParallelGroup
from securetrain.tee.training.handoff import Assignment, receive_assignment
from securetrain.tee.training.loop import select_device

log = logging.getLogger(__name__)


class _Reports:
    """The leader's :class:`ProgressSink`: each report a frame to the launcher, which tells the agent; an epoch's
    end returns only when the launcher acknowledges that the agent accepted it."""

    def __init__(self, out: BinaryIO, acks: BinaryIO) -> None:
        self._out, self._acks = out, acks

    def validation_done(self, aggregates: Mapping[str, Any]) -> None:
        write_frame(self._out, {"validation_done": dict(aggregates)})

    def epoch_done(self, epoch: int, step: int, metrics: Mapping[str, float], checkpoint_blob: str) -> None:
        write_frame(self._out, {"epoch_done": {"epoch": epoch, "step": step, "metrics": dict(metrics),
                                               "checkpoint_blob": checkpoint_blob}})  # fmt: skip
        frame = read_frame(self._acks)
        if frame is None or frame[0].get("ack") != "epoch_done":
            raise BrokenFrame(f"the launcher did not acknowledge the end of epoch {epoch}")

    def sealing_model(self) -> None:
        write_frame(self._out, {"sealing_model": True})


class _RelayedUploads:
    """Storage as a worker uses it: reads straight from the blob store, uploads relayed to the launcher.

    The launcher uploads through the agent's store, which witnesses the sealed checkpoints and model."""

    def __init__(self, store: BlobStore, out: BinaryIO) -> None:
        self._store, self._out = store, out

    def open_read(self, container: str, blob: str, *, length: int | None = None) -> BinaryIO:
        return self._store.open_read(container, blob, length=length)

    def list_blobs(self, container: str, prefix: str = "") -> Any:
        return self._store.list_blobs(container, prefix)

    def upload_stream(self, container: str, blob: str, stream: BinaryIO, **options: Any) -> BlobInfo | None:
        length = options.pop("length", None)
        data = stream.read() if length is None else stream.read(length)
        write_frame(self._out, {"upload": {"container": container, "blob": blob, "options": options}}, data)
        return None


def _open_witnessed(assignment: Assignment, store: BlobStore) -> tuple[OpenedHeader, ...]:
    """The shards' headers opened, refused unless this worker reads the very files whose headers the agent witnessed."""
    opened = open_shard_headers(assignment.spec, assignment.keys, store)
    for shard, header, witnessed in zip(assignment.spec.datasets, opened, assignment.headers, strict=True):
        if header.header.to_bytes() != witnessed:
            raise ShardChanged(f"{describe_shard(shard)} is not the sealed file the agent read (its header differs)")
    return opened


def _error(exc: BaseException) -> dict[str, Any]:
    kind = type(exc)
    error: dict[str, Any] = {"type": f"{kind.__module__}.{kind.__qualname__}", "message": str(exc),
                             "domain": isinstance(exc, SecuretrainError)}  # fmt: skip
    if isinstance(exc, DataValidationFailed):
        error["aggregates"] = dict(exc.aggregates)
    return error


def work(assignment: Assignment, out: BinaryIO, acks: BinaryIO) -> None:
    """Train ``assignment``'s part of the job, reporting to ``out`` (the launcher's answers on ``acks``)."""
    torch.set_num_threads(assignment.threads)
    device = select_device()
    if device.type == "cuda":
        torch.cuda.set_device(assignment.rank % torch.cuda.device_count())
    with TeeSettings.load().blob_store() as direct:
        opened = _open_witnessed(assignment, direct)
        group = DataParallelGroup(assignment.rank, assignment.world_size, assignment.port, assignment.timeout_s, device)
        try:
            progress = _Reports(out, acks) if group.leads else NullProgress()
            store = _RelayedUploads(direct, out)
            result = train_in_process(assignment.spec, assignment.keys, store, progress, threading.Event(),  # type: ignore[arg-type]
                                      limits=assignment.limits, group=group, surveyed=assignment.survey, opened=opened)  # fmt: skip
        finally:
            group.close()
    if group.leads:
        write_frame(out, {"result": result.model_dump(mode="json")})


def main(argv: list[str]) -> int:
    in_fd, out_fd = int(argv[0]), int(argv[1])
    with io.open(in_fd, "rb", closefd=True) as src, io.open(out_fd, "wb", closefd=True) as out:
        assignment = receive_assignment(src)
        configure_logging(f"%(asctime)s worker {assignment.rank} %(name)s %(levelname)s %(message)s", force=True)
        try:
            work(assignment, out, src)
        except Exception as exc:  # noqa: BLE001 - every failure goes to the launcher, which decides
            log.error("worker %d failed: %s", assignment.rank, exc, exc_info=not isinstance(exc, SecuretrainError))
            write_frame(out, {"error": _error(exc)})
            return 1
    return 0


def _exit_at_once(code: int) -> NoReturn:
    """End the worker without finalising its interpreter: the logs flushed, then ``os._exit``, as a forked
    multiprocessing child ends. Finalising an interpreter that imported PyTorch collects every module's objects
    (``Py_FinalizeEx``), about 2 s here, and the launcher waits for a worker's exit status, so every job waited for
    it. Nothing is lost: the pipes are closed, the process group destroyed, and the worker keeps nothing but memory."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_at_once(main(sys.argv[1:]))
