"""An Arrow IPC stream served message by message: what each batch states is seen before Arrow allocates for it."""

from __future__ import annotations

import io
import struct

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest

from securetrain.tee.training.arrow_messages import ArrowMessages, ArrowStreamError, BatchMetadata
from tests.arrow_streams import arrow_batches

#: 1234 float64 rows: 9872 bytes of values, a length that occurs once in the stream (as each compressed buffer's prefix).
ROWS = 1234
VALUES_BYTES = 8 * ROWS


def table() -> pa.Table:
    return pa.table({
        "x": np.arange(ROWS, dtype=np.float64),
        "site": pa.array(["a", "b", "c", "d"] * (ROWS // 4) + ["a"] * (ROWS % 4)).dictionary_encode(),
    })  # fmt: skip


def read(plaintext: bytes, length: int | None = None) -> tuple[pa.Table, list[BatchMetadata]]:
    seen: list[BatchMetadata] = []
    messages = ArrowMessages(io.BytesIO(plaintext), len(plaintext) if length is None else length, seen.append)
    return pyarrow.ipc.open_stream(messages).read_all(), seen


@pytest.mark.parametrize("compression", [None, "lz4", "zstd"])
def test_arrow_reads_the_served_messages_as_it_reads_the_stream(compression) -> None:
    read_back, _ = read(arrow_batches(table().to_batches(), compression=compression))
    assert read_back.equals(table())


def test_each_batch_states_its_rows_and_what_its_buffers_decompress_to() -> None:
    _, seen = read(arrow_batches(table().to_batches(), compression="zstd"))
    dictionary, batch = seen
    assert dictionary.dictionary and dictionary.rows == 4
    assert not batch.dictionary and batch.rows == ROWS
    # x's values and site's int32 indices; neither column has missing values, so no validity bitmaps
    assert batch.decompressed_bytes == VALUES_BYTES + 4 * ROWS


def test_an_uncompressed_batch_allocates_nothing_beyond_its_body() -> None:
    _, seen = read(arrow_batches(table().to_batches()))
    assert [b.decompressed_bytes for b in seen] == [0, 0]
    assert seen[1].body_bytes >= VALUES_BYTES + 4 * ROWS


def test_the_check_refuses_a_batch_before_arrow_decompresses_it() -> None:
    """A single batch of 80 MB of zeros compresses to a few kilobytes; the check's exception reaches the caller."""
    zeros = pa.table({"x": np.zeros(10_000_000)})
    plaintext = arrow_batches(zeros.to_batches(), compression="zstd")
    assert len(plaintext) < 10_000

    def refuse(batch: BatchMetadata) -> None:
        raise MemoryError(f"{batch.decompressed_bytes} bytes")

    with pytest.raises(MemoryError, match="^80000000 bytes$"):
        pyarrow.ipc.open_stream(ArrowMessages(io.BytesIO(plaintext), len(plaintext), refuse)).read_all()


def with_uncompressed_length(plaintext: bytes, stated: int) -> bytes:
    prefix = struct.pack("<q", VALUES_BYTES)
    assert plaintext.count(prefix) == 1
    return plaintext.replace(prefix, struct.pack("<q", stated))


def test_a_compressed_buffer_stating_a_larger_length_is_seen_at_that_length() -> None:
    stated = 1 << 40
    seen: list[BatchMetadata] = []

    def refuse(batch: BatchMetadata) -> None:
        seen.append(batch)
        if batch.decompressed_bytes > 1 << 30:
            raise MemoryError

    plaintext = with_uncompressed_length(arrow_batches(table().to_batches(), compression="zstd"), stated)
    with pytest.raises(MemoryError):
        pyarrow.ipc.open_stream(ArrowMessages(io.BytesIO(plaintext), len(plaintext), refuse)).read_all()
    assert seen[-1].decompressed_bytes == stated + 4 * ROWS


@pytest.mark.parametrize(
    ("hostile", "message"),
    [
        pytest.param(lambda p: with_uncompressed_length(p, -2), "buffer 1 of a record batch states -2 uncompressed bytes",
                     id="negative-uncompressed-length"),  # fmt: skip
        pytest.param(lambda p: p[:4] + b"\xff" * 4 + p[8:], "a message states -1 bytes of metadata",
                     id="negative-metadata-length"),  # fmt: skip
        pytest.param(lambda p: p[:8] + b"\xff" * 64 + p[72:], "a message's metadata is not a valid Arrow Message flatbuffer",
                     id="metadata-not-a-flatbuffer"),  # fmt: skip
        pytest.param(lambda p: p[:100], "the stream ends inside a message's metadata", id="cut-in-the-metadata"),
    ],
)
def test_a_malformed_stream_is_refused_naming_what(hostile, message) -> None:
    with pytest.raises(ArrowStreamError, match="^" + message):
        read(hostile(arrow_batches(table().to_batches(), compression="zstd")))


def test_a_body_longer_than_the_plaintext_left_is_refused_before_it_is_read() -> None:
    plaintext = arrow_batches(table().to_batches())
    with pytest.raises(ArrowStreamError, match=r"^a message states a \d+-byte body; \d+ bytes of the plaintext are left"):
        read(plaintext, length=len(plaintext) - 64)


def test_the_pre_0_15_framing_is_refused() -> None:
    with pytest.raises(ArrowStreamError, match="continuation marker"):
        read(arrow_batches(table().to_batches(), use_legacy_format=True))
