"""The segment stream: Tink's AES-GCM-HKDF streaming AEAD, byte for byte (layout: docs/formats.md).

The counter in each segment's nonce makes a moved or duplicated segment fail authentication; the last-segment
flag makes a stream cut at a segment boundary fail. ``tests/unit/test_sealed_tink.py`` proves the format
against the ``tink`` package in both directions. We write the framing ourselves, over ``cryptography``'s
AESGCM with caller-owned buffers, because Tink's Python streaming API is several times slower and cannot say
*which* segment failed or why (docs/formats.md, "Where it deviates from Tink, and why").
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securetrain.core.sealed.errors import (
    MalformedHeader,
    SealInputError,
    SegmentOutOfOrder,
    SegmentTampered,
    TrailingData,
    Truncated,
)

KEY_SIZE = 32
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
STREAM_HEADER_SIZE = 1 + KEY_SIZE + NONCE_PREFIX_SIZE
DEFAULT_SEGMENT_SIZE = 1 << 20
MIN_SEGMENT_SIZE = 4096
# A segment is held in memory twice (ciphertext and plaintext): the bound keeps memory O(segment).
MAX_SEGMENT_SIZE = 64 << 20
# The nonce carries the segment number in 32 bits.
MAX_SEGMENTS = 1 << 32
# When a segment fails, trying it at other positions tells reordering from corruption; the bound keeps
# the diagnosis of a huge file short (it only runs on the failure path).
MAX_DIAGNOSIS_TRIALS = 4096


@dataclass(frozen=True)
class SegmentLayout:
    """Where each segment of a stream of ``plaintext_length`` bytes begins and how long it is.

    The plaintext length is authenticated in the sealed header, so the layout is known before the
    first byte of the stream is read: truncation and appended bytes are structural facts.
    """

    segment_size: int
    plaintext_length: int

    def __post_init__(self) -> None:
        if not MIN_SEGMENT_SIZE <= self.segment_size <= MAX_SEGMENT_SIZE:
            raise SealInputError(
                f"segment size {self.segment_size} is outside {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE} bytes"
            )
        if self.plaintext_length < 0:
            raise SealInputError(f"plaintext length {self.plaintext_length} is negative")
        if self.segment_count > MAX_SEGMENTS:
            raise SealInputError(
                f"{self.plaintext_length} bytes need {self.segment_count} segments of {self.segment_size}; "
                f"the format allows {MAX_SEGMENTS}: use a larger segment size"
            )

    @property
    def first_plaintext_size(self) -> int:
        return self.segment_size - STREAM_HEADER_SIZE - TAG_SIZE

    @property
    def plaintext_segment_size(self) -> int:
        return self.segment_size - TAG_SIZE

    @property
    def segment_count(self) -> int:
        # As Tink writes it: a segment is closed as non-final only when more plaintext follows, so a
        # stream whose length fills its last segment exactly has no empty segment after it.
        rest = self.plaintext_length - self.first_plaintext_size
        if rest <= 0:
            return 1
        return 1 + -(-rest // self.plaintext_segment_size)

    def plaintext_size(self, index: int) -> int:
        if index == 0:
            return min(self.plaintext_length, self.first_plaintext_size)
        if index < self.segment_count - 1:
            return self.plaintext_segment_size
        before = self.first_plaintext_size + (index - 1) * self.plaintext_segment_size
        return self.plaintext_length - before

    def ciphertext_size(self, index: int) -> int:
        return self.plaintext_size(index) + TAG_SIZE

    def ciphertext_offset(self, index: int) -> int:
        """Offset of segment ``index`` from the start of the stream (its header included)."""
        return STREAM_HEADER_SIZE if index == 0 else index * self.segment_size

    @property
    def stream_length(self) -> int:
        return STREAM_HEADER_SIZE + self.plaintext_length + TAG_SIZE * self.segment_count


def _segment_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _stream_key(dek: bytes, salt: bytes, associated_data: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=associated_data)
    return AESGCM(hkdf.derive(dek))


def read_exact(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src``; return how many bytes arrived (fewer only at end of stream)."""
    filled = 0
    readinto = getattr(src, "readinto", None)
    while filled < len(view):
        if readinto is not None:
            n = readinto(view[filled:])
        else:
            chunk = src.read(len(view) - filled)
            n = len(chunk)
            view[filled : filled + n] = chunk
        if not n:
            break
        filled += n
    return filled


class PlaintextDigest(Protocol):
    """What :func:`encrypt_stream` feeds the plaintext to: a ``hashlib`` hash object."""

    def update(self, data: memoryview, /) -> None: ...


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    dek: bytes,
    associated_data: bytes,
    layout: SegmentLayout,
    digest: PlaintextDigest,
) -> None:
    """Encrypt exactly ``layout.plaintext_length`` bytes of ``src`` into ``dst`` as a segment stream, and feed
    the same plaintext, in order, to ``digest``.

    Hashing runs on a second thread while this one reads, encrypts and writes: ``hashlib`` releases the GIL
    for large buffers (as AES-GCM and file I/O do), and SHA-256 is the slower of the two, so one pass costs
    about what hashing alone does. Two plaintext buffers alternate, so the next segment is read while the
    last is still being hashed; with the ciphertext buffer that keeps memory at three segments. The source
    must hold exactly the announced length: more or fewer bytes mean it changed since it was measured.
    """
    salt = os.urandom(KEY_SIZE)
    prefix = os.urandom(NONCE_PREFIX_SIZE)
    aes = _stream_key(dek, salt, associated_data)
    dst.write(bytes([STREAM_HEADER_SIZE]) + salt + prefix)

    plains = [memoryview(bytearray(layout.plaintext_segment_size)) for _ in range(2)]
    cipher = memoryview(bytearray(layout.segment_size))
    last = layout.segment_count - 1
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seal-digest") as hasher:
        # The hash of the segment before this one; its buffer is refilled only after it is done.
        previous: Future[None] | None = None
        for index in range(layout.segment_count):
            size = layout.plaintext_size(index)
            plain = plains[index % 2][:size]
            if read_exact(src, plain) != size:
                raise SealInputError("the input became shorter while it was being sealed; seal it again")
            hashed = hasher.submit(digest.update, plain)
            aes.encrypt_into(_segment_nonce(prefix, index, index == last), plain, None, cipher[: size + TAG_SIZE])
            dst.write(cipher[: size + TAG_SIZE])
            if previous is not None:
                previous.result()
            previous = hashed
        if previous is not None:
            previous.result()
    if src.read(1):
        raise SealInputError("the input grew while it was being sealed; seal it again")


class StreamDecryptor:
    """Decrypts a segment stream, read once: segment by segment into a buffer it owns (:meth:`segments`), or the
    whole plaintext into the caller's buffer (:meth:`decrypt_into`).

    A failure raises the specific :mod:`securetrain.core.sealed.errors` exception naming the segment, and
    nothing after it is decrypted.
    """

    def __init__(self, src: BinaryIO, *, dek: bytes, associated_data: bytes, layout: SegmentLayout) -> None:
        self._src = src
        self._layout = layout
        header = src.read(STREAM_HEADER_SIZE)
        if len(header) != STREAM_HEADER_SIZE:
            raise Truncated(f"the file ends inside the segment stream's {STREAM_HEADER_SIZE}-byte header")
        if header[0] != STREAM_HEADER_SIZE:
            raise MalformedHeader(
                f"segment stream header length byte is {header[0]}, expected {STREAM_HEADER_SIZE}"
            )
        self._prefix = header[1 + KEY_SIZE :]
        self._aes = _stream_key(dek, header[1 : 1 + KEY_SIZE], associated_data)

    def segments(self) -> Iterator[memoryview]:
        """Yield read-only views of each segment's plaintext; a view is valid until the next one is requested."""
        plain = memoryview(bytearray(self._layout.plaintext_segment_size))
        for out in self._decrypted(lambda _offset, size: plain[:size]):
            yield out.toreadonly()

    def decrypt_into(self, buffer: bytearray | memoryview, verify: Callable[[memoryview], None] | None = None) -> None:
        """Decrypt the whole stream into ``buffer``, of exactly the plaintext's length, each segment straight into
        its place: no segment buffer and no copy; then ``verify`` it whole, if given. On a failure, of a segment or
        of ``verify``, ``buffer`` is zeroed before the error is raised: cryptography's ``decrypt_into`` leaves the
        failed segment's unauthenticated plaintext in its output."""
        view = memoryview(buffer).cast("B")
        if len(view) != self._layout.plaintext_length:
            raise SealInputError(f"the plaintext is {self._layout.plaintext_length} bytes; the buffer is {len(view)}")
        try:
            for _ in self._decrypted(lambda offset, size: view[offset : offset + size]):
                pass
            if verify is not None:
                verify(view)
        except BaseException:
            view[:] = bytes(len(view))
            raise

    def _decrypted(self, place: Callable[[int, int], memoryview]) -> Iterator[memoryview]:
        """Decrypt each segment into ``place(plaintext offset, size)`` and yield that view, in order; then make sure
        nothing follows the final segment."""
        layout = self._layout
        cipher = memoryview(bytearray(layout.segment_size))
        last = layout.segment_count - 1
        offset = 0
        for index in range(layout.segment_count):
            size = layout.ciphertext_size(index)
            got = read_exact(self._src, cipher[:size])
            if got != size:
                raise Truncated(
                    f"the file ends inside segment {index} of {layout.segment_count} "
                    f"({got} of its {size} bytes are there)"
                )
            out = place(offset, size - TAG_SIZE)
            try:
                self._aes.decrypt_into(_segment_nonce(self._prefix, index, index == last), cipher[:size], None, out)
            except InvalidTag:
                raise self._diagnose(index, bytes(cipher[:size])) from None
            offset += len(out)
            yield out
        if self._src.read(1):
            raise TrailingData(f"bytes follow the final segment ({layout.segment_count - 1}); something was appended")

    def _diagnose(self, position: int, ciphertext: bytes) -> Exception:
        """Say why the segment at ``position`` failed: moved or duplicated, or changed.

        Truncation needs no diagnosis: the authenticated plaintext length fixes every segment's size,
        so a short file is found by its length before any tag is checked.
        """
        layout = self._layout
        last = layout.segment_count - 1
        window = range(max(0, position - MAX_DIAGNOSIS_TRIALS // 2), min(last + 1, position + MAX_DIAGNOSIS_TRIALS // 2))
        for index in window:
            if index != position and layout.ciphertext_size(index) == len(ciphertext):
                if self._opens(ciphertext, index, last=index == last):
                    return SegmentOutOfOrder(
                        f"segment at position {position} is segment {index}: segments were reordered or duplicated",
                        position=position,
                        segment=index,
                    )
        start = layout.ciphertext_offset(position)
        return SegmentTampered(
            f"segment {position} failed authentication (stream bytes {start}..{start + len(ciphertext) - 1}): "
            "its ciphertext was changed or corrupted",
            segment=position,
        )

    def _opens(self, ciphertext: bytes, index: int, *, last: bool) -> bool:
        try:
            self._aes.decrypt(_segment_nonce(self._prefix, index, last), ciphertext, None)
        except InvalidTag:
            return False
        return True
