"""The segment stream's bytes are pinned: for the same data key, associated data, salt and nonce prefix, the
writer produces exactly these bytes, however it schedules reading, hashing, encrypting and writing."""

from __future__ import annotations

import hashlib
import io

import pytest

from securetrain.core.sealed import stream
from securetrain.core.sealed.stream import STREAM_HEADER_SIZE, TAG_SIZE, SegmentLayout, encrypt_stream

SEGMENT = 4096
FIRST = SEGMENT - STREAM_HEADER_SIZE - TAG_SIZE
OTHER = SEGMENT - TAG_SIZE
DEK = bytes(range(32))
ASSOCIATED_DATA = b"securetrain pinned stream"

# SHA-256 of the stream written for payload(size), recorded from the writer when it handled one segment at a time.
PINNED = {
    0: "d8a6067c78e9839bf3eaf13ea2895a305a02ac070a3e76d6528145faf49674c1",
    1: "2ef8e853d7b1686d67ed1b2e6309d5620bffcf1e89d702f3a6dd90240e6ef235",
    FIRST: "e894d9dd91c7f2c50ce9af439a48112655a5d7ad225fb19cc660db6ef149366c",
    FIRST + 1: "dbcb69f6081e4082f33048079560d898fdc4934f09490d670a1b69cf1b48e438",
    FIRST + OTHER: "8542d0a43b397835fc79a6b1cb273b02582f2222dd5b4a1cc620962ab602c65b",
    FIRST + 9 * OTHER + 7: "12bd7fb568632428ceadb2e12bde6a6d4ed53b533b236d9219a02468676482a7",
}


def payload(n: int) -> bytes:
    return hashlib.shake_256(n.to_bytes(8, "big")).digest(n) if n else b""


class ShortReads(io.BytesIO):
    """A source that hands out at most 1000 bytes per read, as a pipe or socket may."""

    def readinto(self, buffer) -> int:  # type: ignore[override]
        return super().readinto(memoryview(buffer)[:1000])


@pytest.mark.parametrize("source", [io.BytesIO, ShortReads])
@pytest.mark.parametrize("size", sorted(PINNED))
def test_the_stream_bytes_are_pinned(size, source, monkeypatch):
    # Salt and nonce prefix are the stream's only randomness: fixed here, so its bytes are a function of the inputs.
    randomness = iter([hashlib.sha256(b"salt").digest(), hashlib.sha256(b"prefix").digest()[: stream.NONCE_PREFIX_SIZE]])
    monkeypatch.setattr(stream.os, "urandom", lambda n: next(randomness))
    data = payload(size)
    out = io.BytesIO()
    digest = hashlib.sha256()
    layout = SegmentLayout(SEGMENT, size)
    encrypt_stream(source(data), out, dek=DEK, associated_data=ASSOCIATED_DATA, layout=layout, digest=digest)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(out.getvalue()) == layout.stream_length
    assert hashlib.sha256(out.getvalue()).hexdigest() == PINNED[size]
