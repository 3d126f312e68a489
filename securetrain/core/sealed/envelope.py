"""Sealing and opening files: the header (securetrain.core.sealed.header) followed by the segment stream.

A fresh 256-bit data key per file encrypts the stream, wrapped to the KEK's public key. Opening authenticates
before it interprets, in the order of docs/formats.md ("Opening, in order"), each segment authenticated
before it is handed out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from securetrain.core.fsutil import atomic_output, flushed_while_written
from securetrain.core.sealed.errors import PlaintextDigestMismatch, SealInputError, TrailingData, Truncated, WrongContext
from securetrain.core.sealed.header import TAG_SIZE, KeyWrap, SealedContent, SealedHeader, read_header
from securetrain.core.sealed.kek import WRAP_ALGORITHM, KekPrivateKey, KekPublicKey
from securetrain.core.sealed.stream import DEFAULT_SEGMENT_SIZE, StreamDecryptor, encrypt_stream

log = logging.getLogger(__name__)

DEK_SIZE = 32
_HASH_CHUNK = 1 << 20
# Stands in the header for the digest of a one-pass seal until the stream is written: the same width as
# any SHA-256 in hex, so the rewritten header has the same size. It is outside the stream's associated data.
_PENDING_DIGEST = "0" * 64


def _length(src: BinaryIO) -> int:
    """Length of ``src`` from its position to its end, without reading it; ``src`` is left where it was."""
    if not src.seekable():
        raise SealInputError("sealing needs a seekable input: the header records its length before the stream")
    start = src.tell()
    length = src.seek(0, io.SEEK_END) - start
    src.seek(start)
    return length


def _measure(src: BinaryIO) -> str:
    """SHA-256 of ``src`` from its position to its end; ``src`` is left where it was."""
    start = src.tell()
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(_HASH_CHUNK))
    while n := src.readinto(buffer):  # type: ignore[attr-defined]
        digest.update(buffer[:n])
    src.seek(start)
    return digest.hexdigest()


def _rewritable(dst: BinaryIO) -> bool:
    """Whether the header can be rewritten in place: ``dst`` seeks, and was not opened to append (where
    every write lands at the end, whatever the position)."""
    return bool(getattr(dst, "seekable", lambda: False)()) and "a" not in str(getattr(dst, "mode", ""))


def seal(
    src: BinaryIO,
    dst: BinaryIO,
    kek: KekPublicKey,
    context: Mapping[str, str] | None = None,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> SealedHeader:
    """Seal the rest of ``src`` (seekable) into ``dst`` for ``kek``; memory stays O(segment size).

    ``context`` (dataset id, classification, ...) is recorded in the header and authenticated with
    every segment. When ``dst`` can seek (a file not opened to append, ``BytesIO``), ``src`` is read once:
    its SHA-256 is computed while it is encrypted, and the header, first written with a zero tag (so a seal
    cut short never opens), is rewritten in place with the digest and the tag; it keeps its size, since the
    digest is fixed-width hex. Otherwise ``src`` is read twice, first for the digest. Either way the header's
    digest is that of the bytes encrypted (two reads that disagree are refused as a changed input).
    """
    length = _length(src)
    one_pass = _rewritable(dst)
    start = dst.tell() if one_pass else 0
    content = SealedContent(segment_size, context or {}, length, _PENDING_DIGEST if one_pass else _measure(src))
    dek = os.urandom(DEK_SIZE)
    key = KeyWrap(kek.kek_id, kek.thumbprint, WRAP_ALGORITHM, kek.wrap(dek))
    dst.write(SealedHeader(content, bytes(TAG_SIZE) if one_pass else content.tag(dek), key).to_bytes())
    digest = hashlib.sha256()
    encrypt_stream(
        src, dst, dek=dek, associated_data=content.stream_associated_data(), layout=content.layout, digest=digest
    )
    if not one_pass:
        if digest.hexdigest() != content.plaintext_sha256:
            raise SealInputError("the input changed while it was being sealed; seal it again")
        return SealedHeader(content, content.tag(dek), key)
    content = dataclasses.replace(content, plaintext_sha256=digest.hexdigest())
    header = SealedHeader(content, content.tag(dek), key)
    end = dst.tell()
    dst.seek(start)
    dst.write(header.to_bytes())
    dst.seek(end)
    return header


class OpenedHeader:
    """A sealed file's header opened with its KEK: the data key unwrapped, the header tag and the context checked.

    Reading the same file again, pass this in the KEK's place (``SealedReader(src, opened, ...)``): a file whose
    header is this one byte for byte reuses the data key instead of unwrapping it again (an RSA private-key
    operation, milliseconds); any other header is opened with the KEK exactly as the first one was. The header tag
    and the context are checked again either way, and every segment is authenticated as always. The data key
    lives in this object, in memory only.
    """

    def __init__(
        self,
        header: SealedHeader,
        kek: KekPrivateKey | OpenedHeader,
        *,
        expected_context: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(kek, OpenedHeader):
            self._kek = kek._kek
            # Keyed by every byte of the header (the wrapped key among them), never by where the file came from.
            same = header.to_bytes() == kek.header.to_bytes()
            dek = kek._dek if same else self._unwrap(header)
        else:
            self._kek = kek
            dek = self._unwrap(header)
        header.check_tag(dek)
        content = header.content
        for key, expected in (expected_context or {}).items():
            if content.context.get(key) != expected:
                raise WrongContext(
                    f"context {key!r} is {content.context.get(key)!r} in the sealed file, expected {expected!r}"
                )
        self.header = header
        self._dek = dek

    def _unwrap(self, header: SealedHeader) -> bytes:
        key = header.key
        return self._kek.unwrap(key.wrapped_dek, kek_id=key.kek_id, kek_thumbprint=key.kek_thumbprint)

    def __repr__(self) -> str:
        # Never print the data key, even by accident in a log line or traceback.
        return f"OpenedHeader(kek_id={self.header.key.kek_id!r}, context={dict(self.header.content.context)!r})"


class SealedReader(io.RawIOBase):
    """The plaintext of a sealed file, decrypted segment by segment as it is read.

    Use :meth:`segments` for zero-copy iteration, :meth:`read_plaintext` or :meth:`decrypt_into` for the
    whole plaintext in one buffer, or the file interface (``read``/``readinto``); the plaintext is read once. A
    failure in any segment raises its specific error; a consumer must treat everything it has read
    as untrusted until the stream has been read to its end without error. ``kek`` is the KEK's private
    key, or the :class:`OpenedHeader` of an earlier read of the same file.
    """

    def __init__(
        self,
        src: BinaryIO,
        kek: KekPrivateKey | OpenedHeader,
        *,
        expected_context: Mapping[str, str] | None = None,
        verify_digest: bool = False,
    ) -> None:
        super().__init__()
        self.header = read_header(src)
        #: The header as opened here: hand it to the next reader of the same file to skip the data key's unwrap.
        self.opened = OpenedHeader(self.header, kek, expected_context=expected_context)
        content = self.header.content
        self._decryptor = StreamDecryptor(
            src, dek=self.opened._dek, associated_data=content.stream_associated_data(), layout=content.layout
        )
        self._verify_digest = verify_digest
        self._iterator: Iterator[memoryview] | None = None
        self._pending = memoryview(b"")

    def segments(self) -> Iterator[memoryview]:
        """Yield each segment's plaintext; a view is valid until the next one is requested."""
        self._start_reading()
        self._iterator = self._segments()
        return self._iterator

    def read_plaintext(self) -> bytearray:
        """The whole plaintext, decrypted straight into one buffer of its exact size (:meth:`decrypt_into`)."""
        buffer = bytearray(self.header.content.plaintext_length)
        self.decrypt_into(buffer)
        return buffer

    def decrypt_into(self, buffer: bytearray | memoryview) -> None:
        """Decrypt the whole plaintext into ``buffer``, of exactly its length, each segment into its place; with
        ``verify_digest`` it is hashed once it is whole. On a failure ``buffer`` is zeroed."""
        self._start_reading()
        self._iterator = iter(())  # read: the file interface is at its end
        self._decryptor.decrypt_into(buffer, self._check_whole_digest if self._verify_digest else None)

    def _start_reading(self) -> None:
        if self._iterator is not None:
            raise SealInputError("a sealed file's plaintext can be read once")

    def _segments(self) -> Iterator[memoryview]:
        digest = hashlib.sha256() if self._verify_digest else None
        for plaintext in self._decryptor.segments():
            if digest is not None:
                digest.update(plaintext)
            yield plaintext
        if digest is not None:
            self._check_digest(digest.hexdigest())

    def _check_whole_digest(self, plaintext: memoryview) -> None:
        self._check_digest(hashlib.sha256(plaintext).hexdigest())

    def _check_digest(self, digest: str) -> None:
        if digest != self.header.content.plaintext_sha256:
            raise PlaintextDigestMismatch(
                f"the plaintext's SHA-256 is {digest}, the header records {self.header.content.plaintext_sha256}"
            )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._iterator is None:
            self.segments()
        while not self._pending:
            try:
                self._pending = next(self._iterator)  # type: ignore[arg-type]
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        memoryview(buffer)[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def unseal(
    src: BinaryIO,
    dst: BinaryIO,
    kek: KekPrivateKey,
    *,
    expected_context: Mapping[str, str] | None = None,
    verify_digest: bool = False,
) -> SealedHeader:
    """Decrypt ``src`` into ``dst``. On failure ``dst`` holds a prefix: use :func:`unseal_file` for files."""
    reader = SealedReader(src, kek, expected_context=expected_context, verify_digest=verify_digest)
    for plaintext in reader.segments():
        dst.write(plaintext)
    return reader.header


def seal_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    kek: KekPublicKey,
    context: Mapping[str, str] | None = None,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> SealedHeader:
    with open(src_path, "rb") as src, atomic_output(dst_path, mode=0o644) as dst, flushed_while_written(dst):
        header = seal(src, dst, kek, context, segment_size=segment_size)
    log.info(
        "sealed %s -> %s: %d bytes in %d segments for KEK %s",
        src_path, dst_path, header.content.plaintext_length, header.content.layout.segment_count, kek.kek_id,
    )
    return header


def unseal_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    kek: KekPrivateKey,
    *,
    expected_context: Mapping[str, str] | None = None,
    verify_digest: bool = False,
) -> SealedHeader:
    """Decrypt a sealed file; ``dst_path`` appears (owner-only) only if every check passed."""
    with open(src_path, "rb") as src, atomic_output(dst_path) as dst, flushed_while_written(dst):
        header = unseal(src, dst, kek, expected_context=expected_context, verify_digest=verify_digest)
    log.info("opened %s -> %s: %d bytes", src_path, Path(dst_path), header.content.plaintext_length)
    return header


def content_digest(sealed: bytes) -> str:
    """SHA-256 (hex) of what a KEK rotation keeps of a sealed file: header content, header tag, ciphertext.

    Rotation rewrites only the key section (which KEK wraps the data key, and the wrapped key), so this
    digest names the same sealed content before and after it, where a digest of the whole file would
    not. Nothing is lost by leaving the key section out: the header tag is keyed by the data key, so a
    swapped wrapped key that opened to another data key would fail the tag.

    Raises:
        SealedFileError subclasses: the header does not parse, or the length is not the header's.
    """
    header = read_header(io.BytesIO(sealed))
    if len(sealed) != header.sealed_length:
        error = Truncated if len(sealed) < header.sealed_length else TrailingData
        raise error(f"the sealed file is {len(sealed)} bytes; its header says {header.sealed_length}")
    digest = hashlib.sha256(header.content.authenticated_bytes())
    digest.update(header.tag)
    digest.update(memoryview(sealed)[header.size :])
    return digest.hexdigest()


def inspect(src: BinaryIO) -> SealedHeader:
    """Parse a sealed file's header without any key: nothing is decrypted or authenticated."""
    return read_header(src)
