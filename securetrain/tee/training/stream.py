"""Streaming a sealed dataset larger than the in-memory cache: shards read ahead, a shuffle window, exact resume.

Every epoch reads the shards again, in a seeded per-epoch order; the order is cut into *windows* of
``window_shards`` consecutive shards, dealt to *lanes* (:mod:`~securetrain.tee.training.lanes`) whose training
rows are shuffled (seeded by job seed, epoch, window and lane) and fill each their own part of every batch, so
that several workers each read only their lanes' shards. While a window trains, the next ``shards_in_flight``
shards download, authenticate and decode in threads (storage, AES-GCM and the Arrow/Parquet decoders release
the GIL). A window's end is a cut point: a mid-epoch checkpoint records the windows done, and a resumed run
starts at the next window, so it reaches the weights of a run never interrupted. Everything the stream holds is counted by a :class:`BufferLedger` against
the configured budget. The arithmetic, the held-out sample, validation and why DP-SGD needs the in-memory
path are in docs/trainer.md ("The data path").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from securetrain.core.contracts.training import DatasetShard, TrainingSpec
from securetrain.core.errors import ConfigurationError
from securetrain.core.sealed import OpenedHeader
from securetrain.core.storage import BlobStore
from securetrain.tee.training.data import (
    DataLimits,
    DatasetContentError,
    ShardArrays,
    TrainingData,
    check_same_layout,
    describe_shard,
    read_ahead,
    read_shard,
)
from securetrain.tee.training.lanes import Lanes
from securetrain.tee.training.loop import Standardization, Step, Trainee, Training, Windows, held_out_count
from securetrain.tee.training.models import DataShape

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

#: The share of the streaming budget the held-out sample (kept in memory, evaluated every epoch) may take.
HELD_OUT_SHARE = 8
#: The float64 values the survey's moments widen at once.
MOMENT_CHUNK_BYTES = 4 << 20


class DataBudgetExceeded(ConfigurationError):
    """The streaming data path would hold more than its configured memory budget."""


_WAYS_OUT = (
    "raise SECURETRAIN_DATA_STREAM_BUDGET_BYTES, lower SECURETRAIN_DATA_WINDOW_SHARDS or "
    "SECURETRAIN_DATA_SHARDS_IN_FLIGHT, or seal the dataset in smaller shards"
)


class BufferLedger:
    """The bytes the streaming path holds (plaintext being decoded, decoded shards, the shuffle window, the
    held-out sample) against its budget; holding more than the budget is refused, not waited for."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._held = 0
        self.peak = 0
        self._lock = threading.Lock()

    def hold(self, nbytes: int, what: str) -> None:
        with self._lock:
            if self._held + nbytes > self.budget:
                raise DataBudgetExceeded(
                    f"{what} needs {nbytes} bytes while the data path holds {self._held} of its {self.budget}-byte "
                    f"budget; {_WAYS_OUT}"
                )
            self._held += nbytes
            self.peak = max(self.peak, self._held)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._held -= nbytes

    @property
    def held(self) -> int:
        return self._held


def _generator(*parts: int | str) -> torch.Generator:
    """A generator seeded from ``parts`` (job seed, epoch, ...): distinct streams for distinct purposes."""
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def shard_split(rows: int, seed: int, shard: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, held-out rows) of the ``shard``-th shard (in the job's order), ``rows`` rows long:
    :func:`~securetrain.tee.training.loop.held_out_count` of them held out by a seeded permutation."""
    order = torch.randperm(rows, generator=_generator(seed, shard, "held-out"))
    held = held_out_count(rows)
    return order[held:].sort().values, order[:held]


def shard_order(shards: int, seed: int, epoch: int) -> list[int]:
    """The order in which epoch ``epoch`` reads the ``shards`` shards."""
    return torch.randperm(shards, generator=_generator(seed, epoch, "shards")).tolist()


#: One batch as a process trains it: its rows (indices into the process's window rows) and the rows of the whole
#: batch, every lane's (more than the process's own when it reads only some lanes).
BatchPlan = tuple[np.ndarray, int]


def window_batches(lanes: Lanes, train_rows: Sequence[int], seed: int, epoch: int, window: int) -> list[BatchPlan]:
    """The batches of window ``window`` of epoch ``epoch``, whose shards (in window order) have ``train_rows``
    training rows, as this process trains them. The process's window rows are those of the shards it reads
    (:meth:`Lanes.reads`) one after the other in window order; each lane shuffles its rows with a generator of
    its own (lane 0's is the one a single lane uses, so one lane is the order of the window as a whole)."""
    # The permutations are PyTorch's (their generators fix the order); the index arithmetic is NumPy's, on this
    # thread: PyTorch would share each small operation with its intra-op threads, busy with training.
    lane_rows = [0] * lanes.count
    positions: dict[int, list[np.ndarray]] = {lane: [] for lane in lanes.owned}
    offset = 0
    for position, rows in enumerate(train_rows):
        lane = lanes.lane_of(position)
        lane_rows[lane] += rows
        if lanes.reads(position):
            positions[lane].append(np.arange(offset, offset + rows, dtype=np.int64))
            offset += rows
    shuffled = {}
    for lane, parts in positions.items():
        rows_of_lane = np.concatenate(parts) if parts else np.empty(0, np.int64)
        generator = _generator(seed, epoch, window, "rows", *((lane,) if lane else ()))
        shuffled[lane] = rows_of_lane[torch.randperm(len(rows_of_lane), generator=generator).numpy()]
    plans = []
    for batch in range(lanes.batches(lane_rows)):
        taken = [order[batch * lanes.sub_batch(lane) :][: lanes.taken(lane, lane_rows[lane], batch)]
                 for lane, order in shuffled.items()]  # fmt: skip
        plans.append((np.concatenate(taken), lanes.batch_rows(lane_rows, batch)))
    return plans


def refuse_beyond_budget(limits: DataLimits, largest: int, window: int) -> None:
    """Refuse, before any plaintext is read, a streaming budget below what windows of ``window`` shards, the shards
    in flight and one more, each of up to ``largest`` plaintext bytes, and the held-out sample need."""
    held_out = limits.stream_budget_bytes // HELD_OUT_SHARE
    if (window + limits.shards_in_flight + 1) * largest + held_out > limits.stream_budget_bytes:
        raise DataBudgetExceeded(
            f"streaming needs about ({window} window + {limits.shards_in_flight} in flight + 1) x {largest} bytes "
            f"(the largest shard) + {held_out} (held-out sample), more than the {limits.stream_budget_bytes}-byte "
            f"budget; {_WAYS_OUT}"
        )


def _decoded_bytes(part: ShardArrays) -> int:
    return int(part.features.nbytes + part.labels.nbytes)


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations per feature in float64, merged shard by shard (Chan et al.)."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add_rows(self, features: np.ndarray, rows: np.ndarray) -> None:
        """Add the rows ``rows`` of ``features``, :data:`MOMENT_CHUNK_BYTES` of float64 at a time: a shard's training
        rows gathered and widened at once were three copies of the shard beside it."""
        values_per_row = max(1, int(np.prod(features.shape[1:], dtype=np.int64)))
        chunk = max(1, MOMENT_CHUNK_BYTES // (8 * values_per_row))
        for start in range(0, len(rows), chunk):
            taken = rows[start : start + chunk]
            self.add(np.take(features, taken, axis=0).reshape(len(taken), -1))

    def add(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        values = values.astype(np.float64)  # a copy of its own: the deviations are computed in place
        count, mean = len(values), values.mean(axis=0)
        values -= mean
        m2 = np.square(values, out=values).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def standardization(self) -> Standardization:
        if self.mean is None or self.m2 is None:
            raise DatasetContentError("the dataset has no training rows")
        return Standardization(torch.from_numpy(self.mean).float(), torch.from_numpy(np.sqrt(self.m2 / self.count)).float())


class _HeldOutSample:
    """The held-out sample, filled shard by shard into arrays made once for every shard's quota: pieces concatenated
    at the end would hold it twice, and leave the pieces' memory to the allocator in the middle of its heap."""

    def __init__(self, first: ShardArrays, budget: int, shards: int, ledger: BufferLedger) -> None:
        row_bytes = int(np.prod(first.features.shape[1:], dtype=np.int64)) * 4 + 8
        #: Held-out rows kept of each shard: the first of its held-out rows, up to an equal share of the budget.
        self.quota = max(1, budget // row_bytes // shards)
        ledger.hold(self.quota * shards * row_bytes, "the held-out sample")
        self._features = np.empty((self.quota * shards, *first.features.shape[1:]), np.float32)
        self._labels = np.empty(self.quota * shards, np.int64)
        self._filled = 0

    def add(self, part: ShardArrays, held_rows: np.ndarray) -> None:
        kept = held_rows[: self.quota]
        rows = slice(self._filled, self._filled + len(kept))
        # mode="clip": the rows are a permutation's, within the shard; the default "raise" copies through a buffer.
        np.take(part.features, kept, axis=0, out=self._features[rows], mode="clip")
        np.take(part.labels, kept, out=self._labels[rows], mode="clip")
        self._filled += len(kept)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The sample's features and labels (views of the rows filled)."""
        return self._features[: self._filled], self._labels[: self._filled]


@dataclass(frozen=True)
class StreamedDataset:
    """What one streaming pass over the shards learned: shapes, row counts, standardization, the held-out sample."""

    shards: tuple[DatasetShard, ...]
    #: Training rows of each shard (the rest are held out).
    train_rows: tuple[int, ...]
    rows: int
    feature_names: tuple[str, ...]
    shape: DataShape
    stats: Standardization
    #: The held-out rows evaluated each epoch: per shard, the first of its held-out rows, up to an equal quota.
    held_out: TrainingData


class ShardStream:
    """The shards of one job, read ahead through the budget's ledger."""

    def __init__(
        self, spec: TrainingSpec, store: BlobStore, limits: DataLimits, headers: tuple[OpenedHeader, ...],
        lanes: Lanes,
    ) -> None:  # fmt: skip
        limits = limits.within(limits.stream_budget_bytes)
        self._spec, self._store, self._limits, self._headers = spec, store, limits, headers
        self._lanes = lanes
        self._sizes = tuple(opened.header.content.plaintext_length for opened in headers)
        self.ledger = BufferLedger(limits.stream_budget_bytes)
        # A window holds only the shards of this process's lanes.
        refuse_beyond_budget(limits, max(self._sizes), lanes.window_share(limits.window_shards))

    @property
    def held_out_budget(self) -> int:
        return self._limits.stream_budget_bytes // HELD_OUT_SHARE

    def _read(self, index: int) -> ShardArrays:
        """Shard ``index`` decoded, held in the ledger until the caller releases it (:meth:`_release`)."""
        shard, size = self._spec.datasets[index], self._sizes[index]
        self.ledger.hold(size, f"the plaintext of {describe_shard(shard)}")
        try:
            with self._store.open_read(shard.container, shard.blob) as src:
                # Every read of the shard in this run must be of the file whose header was opened first.
                part = read_shard(src, self._headers[index], shard, self._spec.columns, self._limits)
            self.ledger.hold(_decoded_bytes(part), f"the decoded rows of {describe_shard(shard)}")
        finally:
            self.ledger.release(size)
        # Which shards each worker decrypts, for whoever checks that a worker reads only its lanes.
        log.info("decrypted %s: %d rows", describe_shard(shard), len(part.labels))
        return part

    def _release(self, part: ShardArrays) -> None:
        self.ledger.release(_decoded_bytes(part))

    def _reading(self, indices: Iterable[int]) -> Iterator[tuple[int, ShardArrays]]:
        return read_ahead(indices, self._read, self._limits.shards_in_flight)

    def survey(self, seed: int, validate_shard: Callable[[pandas.DataFrame], None] | None) -> StreamedDataset:
        """One pass over the shards in the job's order: their layout and labels checked, each shard handed to
        ``validate_shard`` whole, standardization from the training rows, the held-out sample kept."""
        shards = self._spec.datasets
        first: ShardArrays | None = None
        moments, classes, rows = _Moments(), 0, 0
        train_rows: list[int] = []
        held: _HeldOutSample | None = None
        for index, part in self._reading(range(len(shards))):
            try:
                shard = shards[index]
                if first is None:
                    first = part
                    held = _HeldOutSample(part, self.held_out_budget, len(shards), self.ledger)
                else:
                    check_same_layout(first, part, shard)
                count = len(part.labels)
                if count and int(part.labels.min()) < 0:
                    raise DatasetContentError(f"{describe_shard(shard)}: label {self._spec.columns.label!r} has "
                                              "negative values; labels must be class ids 0..K-1")  # fmt: skip
                if count:
                    classes = max(classes, int(part.labels.max()) + 1)
                if validate_shard is not None:
                    validate_shard(self._as_data(part).validation_frame())
                training, held_rows = shard_split(count, seed, index)
                moments.add_rows(part.features, training.numpy())
                held.add(part, held_rows.numpy())
                train_rows.append(len(training))
                rows += count
                log.info("surveyed %s: %d rows (%d for training)", describe_shard(shard), count, len(training))
            finally:
                self._release(part)
        if first is None or held is None or rows == 0:
            raise DatasetContentError("the dataset has no rows")
        stats = moments.standardization()
        feature_shape = tuple(first.features.shape[1:])
        features, labels = held.arrays()
        held_out = TrainingData(torch.from_numpy(features), torch.from_numpy(labels), first.feature_names,
                                first.feature_columns, self._spec.columns.label)  # fmt: skip
        return StreamedDataset(
            tuple(shards), tuple(train_rows), rows, first.feature_names, DataShape(feature_shape, classes),
            Standardization(stats.mean.reshape(feature_shape), stats.std.reshape(feature_shape)), held_out,
        )  # fmt: skip

    def _as_data(self, part: ShardArrays) -> TrainingData:
        return TrainingData(torch.from_numpy(part.features), torch.from_numpy(part.labels), part.feature_names,
                            part.feature_columns, self._spec.columns.label)  # fmt: skip

    def windows(self, dataset: StreamedDataset, seed: int) -> Windows:
        """Each epoch's windows, each step this process's rows (its lanes') of a batch."""
        size = self._limits.window_shards
        feature_shape = dataset.shape.feature_shape
        lanes = self._lanes

        def epoch_windows(epoch: int, first: int) -> Iterator[tuple[int, Iterable[Step]]]:
            order = shard_order(len(dataset.shards), seed, epoch)
            groups = [order[start : start + size] for start in range(0, len(order), size)]
            ours = [[index for position, index in enumerate(group) if lanes.reads(position)] for group in groups]
            reading = self._reading(index for group in ours[first:] for index in group)
            try:
                for window, group in enumerate(groups[first:], start=first):
                    total = sum(dataset.train_rows[index] for index in ours[window])
                    features = np.empty((total, *feature_shape), np.float32)
                    labels = np.empty(total, np.int64)
                    window_bytes = features.nbytes + labels.nbytes
                    self.ledger.hold(window_bytes, f"shuffle window {window} of epoch {epoch}")
                    try:
                        filled = 0
                        for index in ours[window]:
                            _, part = next(reading)  # read_ahead keeps the order it was given
                            try:
                                training = shard_split(len(part.labels), seed, index)[0].numpy()
                                rows = slice(filled, filled + len(training))
                                # mode="clip": the rows are within the shard; "raise" copies through a buffer.
                                np.take(part.features, training, axis=0, out=features[rows], mode="clip")
                                np.take(part.labels, training, out=labels[rows], mode="clip")
                                filled += len(training)
                            finally:
                                self._release(part)
                        plans = window_batches(lanes, [dataset.train_rows[index] for index in group], seed, epoch, window)
                        yield window, _steps(features, labels, plans)
                    finally:
                        # Dropped before the next window is allocated, so that the ledger's count is what is held.
                        del features, labels
                        self.ledger.release(window_bytes)
            finally:
                reading.close()

        return epoch_windows

    def training(self, trainee: Trainee, dataset: StreamedDataset, seed: int) -> Training:
        """Plain training over the stream: every training row of this process's lanes once per epoch, window by
        window (every row, in one process)."""
        count = math.ceil(len(dataset.shards) / self._limits.window_shards)
        return Training(trainee.model, trainee.optimizer, self.windows(dataset, seed), sum(dataset.train_rows),
                        window_count=count)  # fmt: skip


def _steps(features: np.ndarray, labels: np.ndarray, plans: list[BatchPlan]) -> Iterator[Step]:
    """The window's steps as ``plans`` cut them from its rows. Gathered by NumPy, on this thread: PyTorch's gather
    of a batch's rows would share it with its intra-op threads, which the training steps and the read-ahead
    already keep busy."""
    for rows, batch_rows in plans:
        yield Step(torch.from_numpy(np.take(features, rows, axis=0)), torch.from_numpy(np.take(labels, rows)),
                   len(rows), batch_rows)  # fmt: skip
