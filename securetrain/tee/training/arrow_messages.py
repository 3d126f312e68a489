"""An Arrow IPC stream served to pyarrow one message at a time, each checked before Arrow reads any of it.

An Arrow IPC stream is the data owner's to write, and Arrow sizes what it allocates by what the stream states:
a message's body is read at the length its metadata gives, and a compressed buffer (LZ4 or ZSTD) is
decompressed into an allocation of the length its first eight bytes give, so a few kilobytes of compressed
zeros can state gigabytes. Here each message's framing and metadata are read first (the encapsulated message
format: https://arrow.apache.org/docs/format/Columnar.html#encapsulated-message-format), its body must fit in
what is left of the plaintext, each record batch's rows and decompressed bytes go to the caller's check, and
only then is the message served to :func:`pyarrow.ipc.open_stream`, without a copy.

The metadata is a FlatBuffer (``Message.fbs`` and ``Schema.fbs`` in Arrow's ``format/`` directory), read with
the FlatBuffers runtime's table accessors for the few fields that size allocations. Arrow verifies the same
bytes before it uses them, so metadata that the two could read differently is refused by Arrow.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from flatbuffers import number_types
from flatbuffers.table import Table

from securetrain.core.sealed.stream import read_exact

#: The marker before each message's metadata length since Arrow 0.15 (an older stream has none: refused).
CONTINUATION = 0xFFFFFFFF
#: ``MessageHeader`` union members whose bodies hold buffers (Message.fbs); a schema has no body.
DICTIONARY_BATCH, RECORD_BATCH = 2, 3
#: A compressed buffer whose uncompressed-length prefix is -1 is stored uncompressed (Arrow's columnar format).
STORED_UNCOMPRESSED = -1


class ArrowStreamError(ValueError):
    """The plaintext is not a well-formed Arrow IPC stream (found before Arrow read the message)."""


@dataclass(frozen=True)
class BatchMetadata:
    """What a record batch's metadata states, before Arrow reads its body."""

    rows: int
    #: The message's body, which Arrow reads its uncompressed buffers from in place.
    body_bytes: int
    #: What Arrow allocates to decompress its buffers (0 for an uncompressed batch, read in place from the body).
    decompressed_bytes: int
    #: A dictionary batch (the values of a dictionary-encoded column), not rows of the stream's schema.
    dictionary: bool


def _field(table: Table, slot: int) -> int:
    """The position of ``table``'s field ``slot`` (its index in the schema's table), 0 when it is absent."""
    offset = table.Offset(4 + 2 * slot)
    return table.Pos + offset if offset else 0


def _subtable(table: Table, slot: int) -> Table | None:
    position = _field(table, slot)
    return Table(table.Bytes, table.Indirect(position)) if position else None


def _int(table: Table, slot: int, flags: type = number_types.Int64Flags) -> int:
    position = _field(table, slot)
    return table.Get(flags, position) if position else 0


def _message_header(metadata: bytes) -> tuple[int, int, Table | None]:
    """``Message``'s header type, body length, and header table."""
    message = Table(metadata, Table(metadata, 0).Get(number_types.UOffsetTFlags, 0))
    kind = _int(message, 1, number_types.Uint8Flags)
    return kind, _int(message, 3), _subtable(message, 2)


def _batch_metadata(batch: Table, body: memoryview, dictionary: bool) -> BatchMetadata:
    """``RecordBatch``'s length, and the uncompressed lengths its compressed buffers state in the body."""
    rows = _int(batch, 0)
    if rows < 0:
        raise ArrowStreamError(f"a record batch states {rows} rows")
    decompressed = 0
    buffers = _field(batch, 2)
    if buffers and _subtable(batch, 3) is not None:  # BodyCompression: each buffer's first 8 bytes, its length
        start = batch.Vector(buffers - batch.Pos)
        for index in range(batch.VectorLen(buffers - batch.Pos)):
            offset, length = struct.unpack_from("<qq", batch.Bytes, start + 16 * index)
            if length == 0:
                continue
            if offset < 0 or length < 8 or offset + length > len(body):
                raise ArrowStreamError(f"buffer {index} of a record batch lies outside its {len(body)}-byte body")
            (uncompressed,) = struct.unpack_from("<q", body, offset)
            if uncompressed < STORED_UNCOMPRESSED:
                raise ArrowStreamError(f"buffer {index} of a record batch states {uncompressed} uncompressed bytes")
            decompressed += max(uncompressed, 0)
    return BatchMetadata(rows, len(body), decompressed, dictionary)


class ArrowMessages:
    """A file-like object over ``source`` (``length`` bytes) for :func:`pyarrow.ipc.open_stream`: each message is
    read whole, checked, and then served; ``check_batch`` sees every record and dictionary batch first and raises
    to refuse it (the exception reaches pyarrow's caller as it was raised)."""

    closed = False

    def __init__(self, source: BinaryIO, length: int, check_batch: Callable[[BatchMetadata], None]) -> None:
        self._source, self._left, self._check_batch = source, length, check_batch
        self._message = memoryview(b"")
        self._served = 0
        self._ended = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> memoryview:
        if self._served == len(self._message) and not self._ended:
            self._message, self._served = self._next_message(), 0
        end = len(self._message) if size < 0 else min(len(self._message), self._served + size)
        chunk, self._served = self._message[self._served : end], end
        return chunk

    def _take(self, into: memoryview, what: str) -> None:
        if len(into) > self._left or read_exact(self._source, into) != len(into):
            raise ArrowStreamError(f"the stream ends inside {what} ({len(into)} bytes, {self._left} left)")
        self._left -= len(into)

    def _next_message(self) -> memoryview:
        """The next message (framing, metadata, body) in one buffer; empty at the end of the plaintext."""
        if self._left == 0:  # Arrow takes the end of the file for the end of the stream, as does the writer's
            self._ended = True
            return memoryview(b"")
        framing = memoryview(bytearray(8))
        self._take(framing, "a message's framing")
        marker, metadata_length = struct.unpack("<Ii", framing)
        if marker != CONTINUATION:
            raise ArrowStreamError("a message lacks the continuation marker of the Arrow IPC stream format (Arrow ≥ 0.15)")
        if metadata_length == 0:  # the end-of-stream marker
            self._ended = True
            return framing
        if metadata_length < 0:
            raise ArrowStreamError(f"a message states {metadata_length} bytes of metadata")
        metadata = bytearray(metadata_length)
        self._take(memoryview(metadata), "a message's metadata")
        try:
            kind, body_length, header = _message_header(bytes(metadata))
        except (struct.error, TypeError, IndexError):  # offsets outside the metadata (TypeError: negative ones)
            raise ArrowStreamError("a message's metadata is not a valid Arrow Message flatbuffer") from None
        if not 0 <= body_length <= self._left:
            raise ArrowStreamError(f"a message states a {body_length}-byte body; {self._left} bytes of the plaintext are left")
        message = bytearray(8 + metadata_length + body_length)
        message[:8], message[8 : 8 + metadata_length] = framing, metadata
        body = memoryview(message)[8 + metadata_length :]
        self._take(body, "a message's body")
        if header is not None and kind in (RECORD_BATCH, DICTIONARY_BATCH):
            try:
                batch = header if kind == RECORD_BATCH else _subtable(header, 1)  # DictionaryBatch.data
                stated = None if batch is None else _batch_metadata(batch, body, kind == DICTIONARY_BATCH)
            except (struct.error, TypeError, IndexError):
                raise ArrowStreamError("a record batch's metadata is not a valid Arrow RecordBatch flatbuffer") from None
            if stated is not None:
                self._check_batch(stated)
        return memoryview(message)
