"""Sealed dataset shards to training tensors, in memory only.

Each shard is streamed through :class:`~securetrain.core.sealed.SealedReader` (key, header, the shard's
expected context, every segment authenticated) into memory and nowhere else. The formats, why Parquet and
safetensors are buffered whole and Arrow IPC streams are not, and why nothing is trained on partial data are
in docs/trainer.md ("The data path").

The bound of a buffered shard, :attr:`DataLimits.max_buffered_shard_bytes`: while it is parsed a shard exists
up to three times (plaintext buffer, decoded columns, tensors; a Parquet shard's columns only a record batch at a
time), and :data:`SHARDS_IN_FLIGHT` shards are read at
once (the next one downloads and decrypts while the current one decodes: storage, AES-GCM and the Parquet
decoder all release the GIL), so the default is an eighth of physical memory (at most 4 GiB). A larger shard
is refused before it is downloaded, and one whose arrays would be larger (as its Parquet footer or safetensors
header states its rows) before they are allocated, naming the two ways out (smaller shards, or the ``arrow``
format). An ``arrow`` shard's plaintext is not bounded; its arrays are, and each of its record batches, before
Arrow reads it (:class:`_ArrowStreamBounds`).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import islice
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pyarrow.parquet as pq
import safetensors.torch
import torch

from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.sealed import KekPrivateKey, OpenedHeader, SealedReader
from securetrain.core.sealed.errors import MalformedHeader, SealedFileError
from securetrain.core.contracts.job_spec import Columns
from securetrain.core.contracts.training import DatasetShard, JobKeys, TrainingSpec
from securetrain.tee.training.arrow_messages import ArrowMessages, ArrowStreamError, BatchMetadata

if TYPE_CHECKING:
    import pandas

    from securetrain.core.storage import BlobStore

log = logging.getLogger(__name__)

GiB = 1 << 30
SHARDS_IN_FLIGHT = 2
#: What is fetched of each shard to read its header when choosing the data path; sealed headers are a few KiB.
HEADER_PREFIX_BYTES = 64 * 1024
#: Headers opened at once. Opening one is a ranged GET of :data:`HEADER_PREFIX_BYTES` and an RSA-OAEP unwrap of
#: under a millisecond: the time is the storage round trip, so more are in flight than shards are read (each holds
#: only its prefix), and fewer than the storage client's pool of 10 connections.
HEADERS_IN_FLIGHT = 8
#: What a tabular shard decodes at once, in rows of 8 bytes a column (the widest a column decodes to): a Parquet
#: shard's arrays are filled batch by batch, never from a whole-shard Arrow table, and the feature columns of any
#: record batch are written to them this many bytes of rows at a time. Smaller batches cost Arrow more work per
#: byte: batches of this size decode a 4 MiB shard in ~1.5 ms more CPU than one batch does, and kept the streaming
#: benchmark's data path ~11 MiB smaller than batches of 4 MiB or whole row groups did.
TABULAR_BATCH_BYTES = 1 << 20
#: What reading bytes that are not a valid file of the format raises: pyarrow's errors (but for an allocation that
#: failed, ``pa.ArrowMemoryError``, which is not the data owner's bytes' fault) and a column name that is not UTF-8.
_UNREADABLE = (
    pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowKeyError, pa.ArrowTypeError, pa.ArrowIndexError, OSError,
    UnicodeDecodeError,
)  # fmt: skip
S = TypeVar("S")
T = TypeVar("T")


class DatasetContentError(ConfigurationError):
    """An authentic shard does not hold what the job spec says (columns, types, shapes, labels)."""


class ShardTooLarge(DatasetContentError):
    """A Parquet or safetensors shard, as plaintext or as decoded arrays, is larger than the trainer may buffer in
    memory."""


class DatasetTooLarge(DatasetContentError):
    """A dataset read into memory decodes to more than the in-memory cache its plaintext fit in."""


class ShardChanged(SecurityViolation):
    """A shard read again in the same run is another sealed file than the one read first."""


def _default_buffered_shard_bytes() -> int:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(4 * GiB, physical // (4 * SHARDS_IN_FLIGHT))


def _default_data_path_bytes() -> int:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(16 * GiB, physical // 8)


@dataclass(frozen=True)
class DataLimits:
    """Memory bounds of the data path: the TEE's own configuration (:class:`~securetrain.tee.settings.DataPathSettings`),
    never the job's. Why these values, and the arithmetic of the streaming path, are in docs/trainer.md
    ("The data path")."""

    max_buffered_shard_bytes: int = _default_buffered_shard_bytes()
    #: A dataset whose plaintext (from the shards' authenticated headers) is at most this many bytes is read
    #: into memory whole; a larger one is streamed.
    cache_bytes: int = _default_data_path_bytes()
    #: What the streaming path may hold at once: shards in flight, the shuffle window, the held-out sample.
    stream_budget_bytes: int = _default_data_path_bytes()
    #: Shards downloaded, authenticated and decoded ahead of the one being trained on.
    shards_in_flight: int = SHARDS_IN_FLIGHT
    #: Consecutive shards (of an epoch's shard order) whose training rows are shuffled together.
    window_shards: int = 4
    #: A mid-epoch checkpoint after every this many windows when streaming (0: only at the ends of epochs).
    checkpoint_windows: int = 8
    #: Lanes a streamed window's shards are dealt to, each filling its own part of every batch; several workers
    #: split the lanes among them (docs/trainer.md, "The data path").
    lanes: int = 1

    def streams(self, plaintext_bytes: int) -> bool:
        """Whether a dataset of ``plaintext_bytes`` is streamed (above the in-memory cache)."""
        return plaintext_bytes > self.cache_bytes

    def within(self, memory_bytes: int) -> DataLimits:
        """These limits for a path that holds at most ``memory_bytes`` (the in-memory cache, the streaming budget): a
        shard decoding to more could never be held, so it is refused before its arrays exist."""
        return replace(self, max_buffered_shard_bytes=min(self.max_buffered_shard_bytes, memory_bytes))


@dataclass(frozen=True)
class TrainingData:
    """The decrypted dataset: ``features`` [rows, *feature_shape] float32, ``labels`` [rows] int64.

    ``feature_names`` are the feature columns (tabular) or the feature tensor names (safetensors);
    ``feature_columns`` name each of the ``prod(feature_shape)`` values of a row: the column names
    (tabular), or a tensor's name, followed by ``_<i>`` for its flattened elements when it holds more than
    one value per row (safetensors).
    """

    features: torch.Tensor
    labels: torch.Tensor
    feature_names: tuple[str, ...]
    feature_columns: tuple[str, ...]
    label_name: str

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    def validation_frame(self) -> pandas.DataFrame:
        """The ``feature_columns`` and the label as a pandas DataFrame that shares memory with the tensors."""
        import pandas  # noqa: PLC0415 - pandas is only needed when a suite runs

        frame = pandas.DataFrame(self.features.reshape(self.rows, -1).numpy(), columns=self.feature_columns, copy=False)
        frame[self.label_name] = self.labels.numpy()
        return frame


@dataclass(frozen=True)
class ShardArrays:
    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...]
    feature_columns: tuple[str, ...]


def describe_shard(shard: DatasetShard) -> str:
    return f"shard {shard.container}/{shard.blob}"


def _tabular_columns(schema: pa.Schema, columns: Columns, where: str) -> tuple[str, ...]:
    """The feature column names, checked against the shard's schema."""
    names = schema.names
    if columns.label not in names:
        raise DatasetContentError(f"{where} has no label column {columns.label!r}; its columns are {names}")
    if not pa.types.is_integer(schema.field(columns.label).type):
        raise DatasetContentError(
            f"{where}: label column {columns.label!r} has type {schema.field(columns.label).type}; labels must be "
            "integer class ids"
        )
    features = columns.features or tuple(name for name in names if name != columns.label)
    missing = [name for name in features if name not in names]
    if missing:
        raise DatasetContentError(f"{where} has no feature column {missing[0]!r}; its columns are {names}")
    for name in features:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise DatasetContentError(
                f"{where}: feature column {name!r} has type {kind}; features must be numeric (name the numeric "
                "columns in columns.features)"
            )
    if not features:
        raise DatasetContentError(f"{where} has no feature columns besides the label {columns.label!r}")
    return features


def _tabular_arrays(
    data: pa.RecordBatch, features: Sequence[str], label: str, one_type: bool, where: str
) -> ShardArrays:
    """The feature columns of an Arrow IPC record batch as one float32 [rows, features] array and the label as int64.

    Arrow's IPC reader does not validate what it reads: a column may state more values than its buffers hold, and
    the cast in :func:`_copy_column` would read past them, into whatever the TEE's memory holds there. So the
    columns copied are validated first (pa.ArrowInvalid)."""
    data.select([*features, label]).validate()
    arrays = _empty_arrays(data.num_rows, features)
    nulls = np.zeros(len(features) + 1, np.int64)
    _fill_tabular(data, arrays, 0, label, nulls, one_type)
    _refuse_missing(features, label, nulls, where)
    return arrays


def _empty_arrays(rows: int, features: Sequence[str]) -> ShardArrays:
    return ShardArrays(np.empty((rows, len(features)), np.float32), np.empty(rows, np.int64), tuple(features),
                       tuple(features))  # fmt: skip


def _batch_rows(columns: int) -> int:
    """The rows of ``columns`` columns decoded at once (:data:`TABULAR_BATCH_BYTES`)."""
    return max(1, TABULAR_BATCH_BYTES // (8 * columns))


def _one_numeric_type(schema: pa.Schema, features: Sequence[str]) -> bool:
    """Whether the feature columns are all of one integer or floating type: then Arrow writes rows of them at once
    (:func:`_fill_tabular`)."""
    kinds = {schema.field(name).type for name in features}
    kind = next(iter(kinds))
    return len(kinds) == 1 and (pa.types.is_integer(kind) or pa.types.is_floating(kind))


def _fill_tabular(
    data: pa.RecordBatch, into: ShardArrays, offset: int, label: str, nulls: np.ndarray, one_type: bool
) -> None:
    """Copy ``data``'s rows into ``into`` from row ``offset`` on (copies: Arrow's own buffers are read-only, and the
    tensors must own their memory), adding each column's missing values to ``nulls`` (the features', then the
    label's); a column with missing values is not copied: the shard is refused (:func:`_refuse_missing`).

    ``one_type`` (:func:`_one_numeric_type`): Arrow writes the feature columns' rows at once, a slice of
    :data:`TABULAR_BATCH_BYTES` at a time (its row-major copy stays small beside the batch), and NumPy casts them to
    float32 as :func:`_copy_column`'s cast would. A column at a time costs a Python call per column and batch, a
    third of a 64-column shard's decoding. Arrow refuses rows with missing values; then the columns are copied one
    by one, which counts them."""
    rows = slice(offset, offset + data.num_rows)
    nulls[-1] += _copy_column(data.column(label), into.labels[rows])
    if one_type and not nulls.any():
        features = data.select(list(into.feature_names))
        step = _batch_rows(len(into.feature_names) + 1)
        try:
            with np.errstate(over="ignore"):  # a double beyond float32's range becomes ±inf, as Arrow's cast makes it
                for start in range(0, data.num_rows, step):
                    part = features.slice(start, step)
                    into.features[offset + start : offset + start + part.num_rows] = np.asarray(part.to_tensor())
            return
        except pa.ArrowTypeError:  # missing values
            pass
    for j, name in enumerate(into.feature_names):
        nulls[j] += _copy_column(data.column(name), into.features[rows, j])


def _copy_column(column: pa.Array, out: np.ndarray) -> int:
    """Copy ``column`` into ``out``, cast to its type as numpy casts (no range check); the column's missing values
    (then nothing is copied). Through the column's data buffer: pyarrow's ``to_numpy`` imports pandas (some 40 MiB
    of memory), which the data path needs only when a suite validates a shard."""
    if column.null_count:
        return int(column.null_count)
    kind = pa.from_numpy_dtype(out.dtype)
    values = column if column.type == kind else pc.cast(column, kind, safe=False)
    out[:] = np.frombuffer(values.buffers()[1], out.dtype, len(values), values.offset * out.dtype.itemsize)
    return 0


def _refuse_missing(features: Sequence[str], label: str, nulls: np.ndarray, where: str) -> None:
    for name, count in zip(features, nulls):
        if count:
            raise DatasetContentError(
                f"{where}: feature column {name!r} has {count} missing values; the trainer does not impute them: "
                "fill or drop them before sealing, or leave the column out of columns.features"
            )
    if nulls[-1]:
        raise DatasetContentError(f"{where}: label column {label!r} has {nulls[-1]} missing values")


def _ways_out(shard: DatasetShard) -> str:
    if shard.format == "arrow":
        return "split it into smaller shards"
    return "split it into smaller shards, or seal it as an Arrow IPC stream (format 'arrow'), which is read batch by batch"


def _refuse_decoded_beyond(limits: DataLimits, rows: int, values_per_row: int, shard: DatasetShard) -> None:
    """Refuse, before they are allocated, a shard's arrays (float32 values, int64 labels) larger than
    :attr:`DataLimits.max_buffered_shard_bytes`: the row count is the data owner's to write (a Parquet footer, a
    safetensors header, an Arrow record batch), and a compressed column or a uint8 tensor decodes to more than its
    plaintext."""
    size = rows * (4 * values_per_row + 8)
    if size > limits.max_buffered_shard_bytes:
        raise ShardTooLarge(
            f"{describe_shard(shard)} decodes to {rows} rows of {values_per_row} values, {size} bytes, more than the "
            f"{limits.max_buffered_shard_bytes} bytes one {shard.format} shard may take in the trainer's memory; "
            f"{_ways_out(shard)}"
        )


def _read_parquet(reader: SealedReader, shard: DatasetShard, columns: Columns, limits: DataLimits) -> ShardArrays:
    """Decoded record batch by record batch into arrays of the row count in the file's footer, so that the shard
    never exists as a whole Arrow table beside its plaintext and its arrays."""
    where = describe_shard(shard)
    buffer = reader.read_plaintext()
    try:
        file = pq.ParquetFile(pa.BufferReader(buffer))
        features = _tabular_columns(file.schema_arrow, columns, where)
    except _UNREADABLE as exc:
        raise DatasetContentError(f"{where} is authentic but not a Parquet file: {exc}") from None
    rows = file.metadata.num_rows
    if rows < 0:  # the footer is the data owner's to write; it sizes the arrays below
        raise DatasetContentError(f"{where}: its footer says {rows} rows")
    _refuse_decoded_beyond(limits, rows, len(features), shard)
    arrays = _empty_arrays(rows, features)
    nulls = np.zeros(len(features) + 1, np.int64)
    one_type = _one_numeric_type(file.schema_arrow, features)
    filled = 0
    # One thread: the shards in flight are each decoded in a reader thread of their own already, and Arrow's pool
    # spent more CPU on these small batches than it saved.
    batches = file.iter_batches(batch_size=_batch_rows(len(features) + 1), columns=[*features, columns.label],
                                use_threads=False)  # fmt: skip
    try:
        for batch in batches:
            if filled + batch.num_rows > rows:
                raise DatasetContentError(f"{where}: its row groups hold more rows than the {rows} its footer says")
            _fill_tabular(batch, arrays, filled, columns.label, nulls, one_type)
            filled += batch.num_rows
    except _UNREADABLE as exc:
        raise DatasetContentError(f"{where} is authentic but not a valid Parquet file: {exc}") from None
    if filled != rows:
        raise DatasetContentError(f"{where}: its row groups hold {filled} rows, its footer says {rows}")
    _refuse_missing(features, columns.label, nulls, where)
    return arrays


class _ArrowStreamBounds:
    """What an Arrow IPC shard may make the trainer allocate, checked for each batch before Arrow reads it: a record
    batch is held whole while it is copied, so its body and decompressed buffers, the dictionaries (held for the
    whole stream), and the shard's arrays so far are each bounded as a buffered shard is."""

    def __init__(self, shard: DatasetShard, limits: DataLimits) -> None:
        self._shard, self._limits = shard, limits
        self.values_per_row = 0  # the feature columns, once the schema is read
        self._rows = self._dictionaries = 0

    def check(self, batch: BatchMetadata) -> None:
        held = batch.body_bytes + batch.decompressed_bytes
        if batch.dictionary:
            self._dictionaries += held
        if max(held, self._dictionaries) > self._limits.max_buffered_shard_bytes:
            what = "its dictionaries take" if batch.dictionary else "a record batch takes"
            raise ShardTooLarge(
                f"{describe_shard(self._shard)}: {what} {max(held, self._dictionaries)} bytes decompressed, more than "
                f"the {self._limits.max_buffered_shard_bytes} bytes one arrow shard may take in the trainer's memory; "
                "write it in smaller record batches (and dictionaries), or split it into smaller shards"
            )
        if not batch.dictionary:
            self._rows += batch.rows
            _refuse_decoded_beyond(self._limits, self._rows, self.values_per_row, self._shard)


def _read_arrow_stream(reader: SealedReader, shard: DatasetShard, columns: Columns, limits: DataLimits) -> ShardArrays:
    """Record batch by record batch as the plaintext is decrypted, each batch checked (:class:`_ArrowStreamBounds`)
    before Arrow reads it."""
    where = describe_shard(shard)
    bounds = _ArrowStreamBounds(shard, limits)
    try:
        batches = pyarrow.ipc.open_stream(ArrowMessages(reader, reader.header.content.plaintext_length, bounds.check))
        features = _tabular_columns(batches.schema, columns, where)
        bounds.values_per_row = len(features)
        one_type = _one_numeric_type(batches.schema, features)
        parts = [_tabular_arrays(batch, features, columns.label, one_type, where) for batch in batches]
    except (*_UNREADABLE, ArrowStreamError) as exc:
        raise DatasetContentError(f"{where} is authentic but not a valid Arrow IPC stream: {exc}") from None
    if reader.read(1):  # the Arrow end-of-stream marker came before the sealed plaintext's end
        raise DatasetContentError(f"{where}: bytes follow the Arrow stream's end-of-stream marker")
    if not parts:
        return ShardArrays(np.empty((0, len(features)), np.float32), np.empty(0, np.int64), features, features)
    return ShardArrays(
        np.concatenate([p.features for p in parts]), np.concatenate([p.labels for p in parts]), features, features
    )


def _read_safetensors(reader: SealedReader, shard: DatasetShard, columns: Columns, limits: DataLimits) -> ShardArrays:
    where = describe_shard(shard)
    try:
        tensors = safetensors.torch.load(bytes(reader.read_plaintext()))
    except safetensors.SafetensorError as exc:
        raise DatasetContentError(f"{where} is authentic but not a safetensors file: {exc}") from None
    if columns.label not in tensors:
        raise DatasetContentError(f"{where} has no label tensor {columns.label!r}; its tensors are {sorted(tensors)}")
    labels = tensors[columns.label]
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise DatasetContentError(
            f"{where}: label tensor {columns.label!r} is {labels.dtype} of shape {list(labels.shape)}; it must be "
            "integer class ids of shape [rows]"
        )
    names = columns.features or tuple(sorted(name for name in tensors if name != columns.label))
    missing = [name for name in names if name not in tensors]
    if missing or not names:
        raise DatasetContentError(
            f"{where} has no feature tensor {missing[0] if missing else '(none)'!r}; its tensors are {sorted(tensors)}"
        )
    rows = labels.shape[0]
    for name in names:
        if tensors[name].dim() == 0 or tensors[name].shape[0] != rows:
            raise DatasetContentError(
                f"{where}: feature tensor {name!r} has shape {list(tensors[name].shape)}; its first dimension must be "
                f"the {rows} rows of the label tensor"
            )
    flat_columns: list[str] = []
    for name in names:
        width = tensors[name][0].numel() if rows else 0
        flat_columns += [name] if width == 1 else [f"{name}_{i}" for i in range(width)]
    _refuse_decoded_beyond(limits, rows, len(flat_columns), shard)
    if len(names) == 1:
        # One feature tensor keeps its per-row shape (an image stays C x H x W for the CNN).
        features = tensors[names[0]].to(torch.float32).numpy()
    else:
        features = torch.cat([tensors[name].reshape(rows, -1).to(torch.float32) for name in names], dim=1).numpy()
    return ShardArrays(features, labels.to(torch.int64).numpy(), tuple(names), tuple(flat_columns))


#: The formats held whole while they are parsed, bounded by :attr:`DataLimits.max_buffered_shard_bytes` as plaintext
#: and as decoded arrays; an Arrow IPC stream is read batch by batch, and only its batches and arrays are bounded.
_BUFFERED_READERS = {"parquet": _read_parquet, "safetensors": _read_safetensors}


def read_shard(
    src: BinaryIO, key: KekPrivateKey | OpenedHeader, shard: DatasetShard, columns: Columns, limits: DataLimits
) -> ShardArrays:
    """Open one sealed shard from ``src`` with ``key`` and decode it; seal failures name the shard and the segment.

    ``key``: the shard's KEK, or its header as this run opened it before (:func:`open_shard_headers`); another
    header then (storage serving another file sealed for the same key and context) is refused with
    :class:`ShardChanged`, so that every read of a shard in a run is of the one file whose header the agent
    witnesses, and the witnessed file's data key is not unwrapped again.
    """
    try:
        reader = SealedReader(src, key, expected_context=shard.context)
        if isinstance(key, OpenedHeader) and reader.header.to_bytes() != key.header.to_bytes():
            raise ShardChanged(
                f"{describe_shard(shard)} is not the sealed file this run read before (its header differs): storage "
                "served another file under its name"
            )
        if shard.format == "arrow":
            return _read_arrow_stream(reader, shard, columns, limits)
        length = reader.header.content.plaintext_length
        if length > limits.max_buffered_shard_bytes:
            raise ShardTooLarge(
                f"{describe_shard(shard)} holds {length} bytes of {shard.format}, more than the "
                f"{limits.max_buffered_shard_bytes} bytes a {shard.format} shard may hold in the trainer's memory; "
                f"{_ways_out(shard)}"
            )
        return _BUFFERED_READERS[shard.format](reader, shard, columns, limits)
    except SealedFileError as exc:
        # Keep the exception's class (the job error code and exit code depend on it) and its segment
        # attributes; only say which shard it was.
        exc.args = (f"{describe_shard(shard)}: {exc.args[0] if exc.args else exc}", *exc.args[1:])
        raise


def check_same_layout(first: ShardArrays, other: ShardArrays, shard: DatasetShard) -> None:
    if other.feature_names != first.feature_names or other.features.shape[1:] != first.features.shape[1:]:
        raise DatasetContentError(
            f"{describe_shard(shard)} has features {list(other.feature_names)} of shape {list(other.features.shape[1:])}, "
            f"the first shard {list(first.feature_names)} of shape {list(first.features.shape[1:])}; every shard "
            "must have the same features"
        )


def read_ahead(items: Iterable[S], read: Callable[[S], T], in_flight: int) -> Iterator[tuple[S, T]]:
    """``(item, read(item))`` for each of ``items`` (shards, or their indices), in order, with up to ``in_flight``
    reads running at once.

    The first failure, in order, is raised; items not yet started are then not read at all. Closing the
    iterator waits for the reads under way and starts no more.
    """
    remaining = iter(items)
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="shard-reader")
    try:
        pending = deque((shard, pool.submit(read, shard)) for shard in islice(remaining, in_flight))
        while pending:
            shard, future = pending.popleft()
            part = future.result()
            following = next(remaining, None)
            if following is not None:
                pending.append((following, pool.submit(read, following)))
            yield shard, part
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _read_in_order(
    spec: TrainingSpec, opened: Sequence[OpenedHeader], store: BlobStore, limits: DataLimits
) -> Iterator[tuple[DatasetShard, ShardArrays]]:
    """Every shard of ``spec``, in order, with up to :data:`SHARDS_IN_FLIGHT` read at once."""

    def read(index: int) -> ShardArrays:
        shard = spec.datasets[index]
        with store.open_read(shard.container, shard.blob) as src:
            return read_shard(src, opened[index], shard, spec.columns, limits.within(limits.cache_bytes))

    return ((spec.datasets[index], part) for index, part in read_ahead(range(len(spec.datasets)), read, SHARDS_IN_FLIGHT))


def open_shard_headers(spec: TrainingSpec, keys: JobKeys, store: BlobStore) -> tuple[OpenedHeader, ...]:
    """Each shard's header opened (its data key unwrapped, its tag checked with it, its context with the
    manifest's), before any of its plaintext is read: their plaintext lengths decide between the in-memory
    and the streaming path, and every later read of the shard in the run must be of that file."""

    def header(shard: DatasetShard, length: int | None) -> OpenedHeader:
        with store.open_read(shard.container, shard.blob, length=length) as src:
            return SealedReader(src, keys.for_shard(shard), expected_context=shard.context).opened

    def read(shard: DatasetShard) -> OpenedHeader:
        try:
            try:
                return header(shard, HEADER_PREFIX_BYTES)
            except MalformedHeader:
                # A header longer than the prefix (a large context), or a malformed one: read from the whole blob,
                # which raises again if the header itself is at fault.
                return header(shard, None)
        except SealedFileError as exc:
            exc.args = (f"{describe_shard(shard)}: {exc.args[0] if exc.args else exc}", *exc.args[1:])
            raise

    return tuple(header for _, header in read_ahead(spec.datasets, read, HEADERS_IN_FLIGHT))


def load_dataset(
    spec: TrainingSpec, opened: Sequence[OpenedHeader], store: BlobStore, limits: DataLimits
) -> TrainingData:
    """Read, authenticate and decode every shard of ``spec``, each the file whose header was ``opened``
    (:func:`open_shard_headers`); returns only when all of them opened."""
    parts: list[ShardArrays] = []
    decoded = 0
    for shard, part in _read_in_order(spec, opened, store, limits):
        if parts:
            check_same_layout(parts[0], part, shard)
        # The path was chosen by plaintext size; what the shards decode to is the data owners' to make larger (a
        # well-compressed column), so the cache bounds it too.
        decoded += part.features.nbytes + part.labels.nbytes
        if decoded > limits.cache_bytes:
            raise DatasetTooLarge(
                f"the dataset decodes to more than the TEE's {limits.cache_bytes}-byte in-memory cache by "
                f"{describe_shard(shard)} ({decoded} bytes so far), though its plaintext fits: give the TEE a "
                "SECURETRAIN_DATA_CACHE_BYTES above what the dataset decodes to, or below its plaintext size, which "
                "streams it (a Parquet column of repeated values decodes to many times its plaintext, compressed or not)"
            )
        log.info("opened %s: %d rows", describe_shard(shard), part.labels.shape[0])
        parts.append(part)
    features = torch.from_numpy(np.concatenate([p.features for p in parts]) if len(parts) > 1 else parts[0].features)
    labels = torch.from_numpy(np.concatenate([p.labels for p in parts]) if len(parts) > 1 else parts[0].labels)
    if labels.numel() == 0:
        raise DatasetContentError("the dataset has no rows")
    if int(labels.min()) < 0:
        raise DatasetContentError(f"label {spec.columns.label!r} has negative values; labels must be class ids 0..K-1")
    first = parts[0]
    return TrainingData(
        features.contiguous(), labels.contiguous(), first.feature_names, first.feature_columns, spec.columns.label
    )
