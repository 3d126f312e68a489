"""A data owner seals a shard that claims or decodes to more than the TEE may hold: the run fails closed, naming it.

What a data owner seals is authentic whatever it holds, so authentication cannot catch a shard built to take the
TEE's memory (which other jobs share) or to make it write past its arrays. A Parquet footer states the rows its
arrays are sized to: it can claim far more rows than memory holds, or fewer than its row groups hold. A column of
one repeated value decodes to thousands of times its plaintext, which is all the path chosen before any shard is
read (in memory, or streamed) knows of it; a compressed Arrow record batch states the length Arrow decompresses it
into, and a few kilobytes of ZSTD can state gigabytes. Played through run_training on the local stack's Azurite, in memory
and streamed, with the dataset of tests/streamed_shards.py, one of its shards replaced by the hostile one.
"""

from __future__ import annotations

import dataclasses
import struct
import threading

import numpy as np
import pyarrow as pa
import pytest

from securetrain.core.datasets import to_parquet
from securetrain.tee.training import run_training
from securetrain.tee.training.data import DataLimits, DatasetContentError, DatasetTooLarge, ShardTooLarge
from tests.arrow_streams import arrow_batches
from tests.integration import test_training_run
from tests.integration.test_training_run import RecordingProgress, upload_sealed
from tests.streamed_shards import FEATURES, LIMITS, as_table, sealed_shards, shard_rows, spec_for
from tests.unit.test_training_data import footer_rows_changed

pytestmark = pytest.mark.integration
# The fixtures of the training-path tests: the local stack's BlobStore, and a KEK made there as if released.
store, keys = test_training_run.store, test_training_run.keys

#: In memory: a cache that holds the shards' plaintext (~17 KB each at most) but not 20 MB of decoded rows.
IN_MEMORY = DataLimits(cache_bytes=4 << 20)
#: Streamed: the budget of tests/streamed_shards.py, doubled for the larger hostile shards.
STREAMED = dataclasses.replace(LIMITS, stream_budget_bytes=2 * LIMITS.stream_budget_bytes)
#: 500,000 rows of zeros: 16.7 KB of Parquet, 20 MB of arrays; 104,000 rows: 4.16 MB, within the in-memory cache
#: alone, beyond it with the five shards read before it.
BOMB_ROWS, CACHE_SIZED_ROWS = 500_000, 104_000


def lying_footer(claimed: int) -> bytes:
    return footer_rows_changed(as_table(*shard_rows(5)), claimed)


def zeros(rows: int) -> pa.Table:
    return as_table(np.zeros((rows, FEATURES), np.float32), np.zeros(rows, np.int64))


def one_value_repeated(rows: int = BOMB_ROWS) -> bytes:
    return to_parquet(zeros(rows))


def compressed_arrow_batch() -> bytes:
    """One record batch of zeros in ZSTD: a few kilobytes that Arrow would decompress into 22 MB before any check."""
    return arrow_batches(zeros(BOMB_ROWS).to_batches(), compression="zstd")


def arrow_column_longer_than_its_buffer(every_feature: bool = False) -> bytes:
    """A record batch whose first column states 200 float64 values and whose buffer holds 100: Arrow's IPC reader
    takes it as it is, and casting the column to float32 would read past the buffer (here into the next column's
    values; in general, whatever the TEE's memory holds there). ``every_feature``: every feature column float64,
    so that the batch's rows would be written at once, by Arrow, rather than column by column."""
    table = as_table(*shard_rows(5))
    for index, name in enumerate(table.column_names[:FEATURES] if every_feature else ["f0"]):
        table = table.set_column(index, name, table.column(index).cast(pa.float64()))
    plaintext = arrow_batches(table.to_batches())
    # The batch's metadata lists f0's buffers first, each an (offset, length): validity (none), then its values.
    f0_buffers = struct.pack("<4q", 0, 0, 0, 8 * len(table))
    assert plaintext.count(f0_buffers) == 1
    return plaintext.replace(f0_buffers, struct.pack("<4q", 0, 0, 0, 4 * len(table)))


def hostile_on_each_path() -> list:
    """The hostile shards refused on both paths, each against what that path may hold at most."""
    cases = []
    for path, limits, bound in (("in-memory", IN_MEMORY, IN_MEMORY.cache_bytes),
                                ("streamed", STREAMED, STREAMED.stream_budget_bytes)):  # fmt: skip
        cases += [
            pytest.param("parquet", limits, lambda: lying_footer(1 << 40), ShardTooLarge,
                         r"shard datasets/{victim} decodes to 1099511627776 rows of 8 values",
                         id=f"footer-claims-more-rows-than-memory-{path}"),
            pytest.param("parquet", limits, lambda: lying_footer(199), DatasetContentError,
                         r"shard datasets/{victim}: its row groups hold more rows than the 199 its footer says",
                         id=f"footer-claims-fewer-rows-than-it-holds-{path}"),
            pytest.param("parquet", limits, one_value_repeated, ShardTooLarge,
                         rf"shard datasets/{{victim}} decodes to {BOMB_ROWS} rows of 8 values, \d+ bytes, more than "
                         rf"the {bound} bytes", id=f"one-shard-decodes-beyond-memory-{path}"),
            pytest.param("arrow", limits, arrow_column_longer_than_its_buffer, DatasetContentError,
                         r"shard datasets/{victim} is authentic but not a valid Arrow IPC stream: .*Buffer #1 too small in "
                         r"array of type double and length 200", id=f"arrow-column-longer-than-its-buffer-{path}"),
            pytest.param("arrow", limits, lambda: arrow_column_longer_than_its_buffer(every_feature=True),
                         DatasetContentError,
                         r"shard datasets/{victim} is authentic but not a valid Arrow IPC stream: .*Buffer #1 too small in "
                         r"array of type double and length 200",
                         id=f"arrow-column-longer-than-its-buffer-rows-at-once-{path}"),
            pytest.param("arrow", limits, compressed_arrow_batch, ShardTooLarge,
                         rf"shard datasets/{{victim}}: a record batch takes \d+ bytes decompressed, more than the "
                         rf"{bound} bytes", id=f"compressed-arrow-batch-beyond-memory-{path}"),
        ]  # fmt: skip
    return cases


@pytest.mark.parametrize(
    ("fmt", "limits", "hostile", "refusal", "message"),
    [
        *hostile_on_each_path(),
        pytest.param("parquet", IN_MEMORY, lambda: one_value_repeated(CACHE_SIZED_ROWS), DatasetTooLarge,
                     r"the dataset decodes to more than the TEE's 4194304-byte in-memory cache by shard "
                     r"datasets/{victim}", id="the-shards-decode-beyond-the-cache-in-memory"),  # fmt: skip
    ],
)
def test_a_hostile_shard_fails_the_run_naming_it_before_it_takes_the_memory(
    store, keys, fmt, limits, hostile, refusal, message
) -> None:
    blobs = sealed_shards(store, keys, fmt)
    victim = blobs[5]
    upload_sealed(store, keys, victim, hostile())
    spec = spec_for(blobs, fmt)
    progress = RecordingProgress()
    with pytest.raises(refusal, match="^" + message.format(victim=victim)):
        run_training(spec, keys, store, progress, threading.Event(), limits=limits)
    assert progress.calls == []  # nothing trained, nothing validated
    assert not list(store.list_blobs("models", spec.run_id))
