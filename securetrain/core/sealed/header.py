"""The sealed-file header: what a file is, for whom its key is wrapped, and the tag that binds it.

*Content* (authenticated: the input of the header tag, so a changed header is named as such before any segment
is read, and, but for the plaintext digest from version 2 on, the segment stream's associated data) says what
was sealed. *Key* says which KEK wraps the data key and is deliberately outside the authenticated part, so
that key rotation rewraps the data key without touching the stream; another wrapped key gains an attacker
nothing, since it fails the header tag.
The byte layout: docs/formats.md ("Layout").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, BinaryIO

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securetrain.core.sealed.errors import HeaderTampered, MalformedHeader, SealInputError, UnsupportedVersion
from securetrain.core.sealed.kek import WRAP_ALGORITHM
from securetrain.core.sealed.stream import SegmentLayout

MAGIC = b"STSL"
#: The version :func:`~securetrain.core.sealed.seal` writes. Version 2 leaves the plaintext digest out of the
#: stream's associated data, so that the digest can be computed while the stream is encrypted (one pass) and
#: written into the header afterwards; the header tag covers it in both versions.
FORMAT_VERSION = 2
#: Versions this release opens: version 1 files (digest in the stream's associated data) stay readable.
READABLE_VERSIONS = (1, 2)
AEAD = "AES256_GCM_HKDF"
TAG_SIZE = 32
MAX_SECTION_SIZE = 64 << 10
_PREFIX = struct.Struct(">4sBI")
_LENGTH = struct.Struct(">I")
_TAG_INFO = b"securetrain sealed v1 header"
_CONTEXT_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_CONTEXT_ENTRIES = 32
MAX_CONTEXT_VALUE = 1024


def validate_context(context: Mapping[str, str]) -> Mapping[str, str]:
    """Check a caller context (short string keys and values) and return a read-only copy."""
    if not isinstance(context, Mapping):
        raise SealInputError("the context must be a mapping of strings to strings")
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise SealInputError(f"the context has {len(context)} entries; at most {MAX_CONTEXT_ENTRIES} are allowed")
    for key, value in context.items():
        if not isinstance(key, str) or not _CONTEXT_KEY.fullmatch(key):
            raise SealInputError(f"context key {key!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if not isinstance(value, str) or len(value) > MAX_CONTEXT_VALUE:
            raise SealInputError(f"context value for {key!r} must be a string of at most {MAX_CONTEXT_VALUE} characters")
    return MappingProxyType(dict(context))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, field: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise MalformedHeader(f"header field {field!r} is not base64url") from None


@dataclass(frozen=True)
class SealedContent:
    """What was sealed: the authenticated half of the header."""

    segment_size: int
    context: Mapping[str, str]
    plaintext_length: int
    plaintext_sha256: str
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.version not in READABLE_VERSIONS:
            raise SealInputError(f"sealed-file format version {self.version} is not one of {READABLE_VERSIONS}")
        object.__setattr__(self, "context", validate_context(self.context))
        self.layout  # noqa: B018 - the layout checks segment size and length together

    @property
    def layout(self) -> SegmentLayout:
        return SegmentLayout(self.segment_size, self.plaintext_length)

    def to_json(self) -> dict[str, Any]:
        return {
            "aead": AEAD,
            "segment_size": self.segment_size,
            "context": dict(self.context),
            "plaintext_length": self.plaintext_length,
            "plaintext_sha256": self.plaintext_sha256,
        }

    def authenticated_bytes(self) -> bytes:
        """The header's authenticated part as it is written: the header tag's input."""
        return self._prefixed(self.to_json())

    def stream_associated_data(self) -> bytes:
        """The segment stream's associated data: the authenticated part, without the digest from version 2 on.

        The digest is then bound by the header tag alone, which is keyed by the same data key as the stream.
        """
        if self.version == 1:
            return self.authenticated_bytes()
        return self._prefixed({k: v for k, v in self.to_json().items() if k != "plaintext_sha256"})

    def _prefixed(self, fields: dict[str, Any]) -> bytes:
        body = rfc8785.dumps(fields)
        return _PREFIX.pack(MAGIC, self.version, len(body)) + body

    def tag(self, dek: bytes) -> bytes:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_TAG_INFO).derive(dek)
        return hmac.digest(key, self.authenticated_bytes(), hashlib.sha256)


@dataclass(frozen=True)
class KeyWrap:
    """Which KEK wraps the data key, and the wrapped key: the half of the header rotation rewrites."""

    kek_id: str
    kek_thumbprint: str
    algorithm: str
    wrapped_dek: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "kek_id": self.kek_id,
            "kek_thumbprint": self.kek_thumbprint,
            "alg": self.algorithm,
            "wrapped_dek": _b64(self.wrapped_dek),
        }


@dataclass(frozen=True)
class SealedHeader:
    content: SealedContent
    tag: bytes
    key: KeyWrap

    def to_bytes(self) -> bytes:
        key = rfc8785.dumps(self.key.to_json())
        return self.content.authenticated_bytes() + self.tag + _LENGTH.pack(len(key)) + key

    @property
    def size(self) -> int:
        return len(self.to_bytes())

    @property
    def sealed_length(self) -> int:
        """The exact length of the whole sealed file."""
        return self.size + self.content.layout.stream_length

    def check_tag(self, dek: bytes) -> None:
        if not hmac.compare_digest(self.content.tag(dek), self.tag):
            raise HeaderTampered(
                "the header's authentication tag does not match: its context, length, digest or segment size "
                "was changed after sealing"
            )

    def with_key(self, key: KeyWrap) -> SealedHeader:
        """The same header with its data key wrapped anew (key rotation); the stream stays valid."""
        return SealedHeader(self.content, self.tag, key)

    def to_json(self) -> dict[str, Any]:
        """The header as ``securetrain inspect`` prints it; nothing here needs a key."""
        return {
            "format": "securetrain-sealed",
            "version": self.content.version,
            **self.content.to_json(),
            "header_tag": self.tag.hex(),
            "key": self.key.to_json(),
            "header_length": self.size,
            "segment_count": self.content.layout.segment_count,
            "sealed_length": self.sealed_length,
        }


def _read(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise MalformedHeader(f"the file ends inside the header's {what} ({len(data)} of {n} bytes)")
    return data


def _section(src: BinaryIO, length: int, what: str) -> tuple[bytes, dict[str, Any]]:
    if not 0 < length <= MAX_SECTION_SIZE:
        raise MalformedHeader(f"header {what} section length {length} is outside 1..{MAX_SECTION_SIZE}")
    raw = _read(src, length, f"{what} section")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise MalformedHeader(f"header {what} section repeats a key")
        return dict(pairs)

    try:
        value = json.loads(raw, object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedHeader(f"header {what} section is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedHeader(f"header {what} section is not a JSON object")
    if rfc8785.dumps(value) != raw:
        raise MalformedHeader(f"header {what} section is not canonical JSON (RFC 8785)")
    return raw, value


def _field(obj: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedHeader(f"header {what} field {name!r} is missing or not a {kind.__name__}")
    return value


def _exact_keys(obj: dict[str, Any], expected: set[str], what: str) -> None:
    if set(obj) != expected:
        extra, missing = sorted(set(obj) - expected), sorted(expected - set(obj))
        raise MalformedHeader(f"header {what} section has unexpected fields {extra} / lacks {missing}")


def read_header(src: BinaryIO) -> SealedHeader:
    """Parse the header at the start of ``src``, leaving ``src`` at the first byte of the stream.

    This checks structure only; the header tag needs the data key (:meth:`SealedHeader.check_tag`).
    """
    magic, version, content_length = _PREFIX.unpack(_read(src, _PREFIX.size, "prefix"))
    if magic != MAGIC:
        raise MalformedHeader(f"not a securetrain sealed file: magic is {magic!r}, expected {MAGIC!r}")
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersion(
            f"sealed-file format version {version} is not supported "
            f"(this release reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    _, content = _section(src, content_length, "content")
    _exact_keys(content, {"aead", "segment_size", "context", "plaintext_length", "plaintext_sha256"}, "content")
    if content["aead"] != AEAD:
        raise MalformedHeader(f"AEAD {content['aead']!r} is not supported (only {AEAD})")
    digest = _field(content, "plaintext_sha256", str, "content")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise MalformedHeader("header field 'plaintext_sha256' is not 64 lower-case hex digits")
    try:
        sealed_content = SealedContent(
            segment_size=_field(content, "segment_size", int, "content"),
            context=_field(content, "context", dict, "content"),
            plaintext_length=_field(content, "plaintext_length", int, "content"),
            plaintext_sha256=digest,
            version=version,
        )
    except SealInputError as exc:
        raise MalformedHeader(f"header content is invalid: {exc}") from None

    tag = _read(src, TAG_SIZE, "authentication tag")
    (key_length,) = _LENGTH.unpack(_read(src, _LENGTH.size, "key section length"))
    _, key = _section(src, key_length, "key")
    _exact_keys(key, {"kek_id", "kek_thumbprint", "alg", "wrapped_dek"}, "key")
    if key["alg"] != WRAP_ALGORITHM:
        raise MalformedHeader(f"key wrap algorithm {key['alg']!r} is not supported (only {WRAP_ALGORITHM})")
    thumbprint = _field(key, "kek_thumbprint", str, "key")
    if not re.fullmatch(r"[0-9a-f]{64}", thumbprint):
        raise MalformedHeader("header field 'kek_thumbprint' is not 64 lower-case hex digits")
    wrap = KeyWrap(
        kek_id=_field(key, "kek_id", str, "key"),
        kek_thumbprint=thumbprint,
        algorithm=WRAP_ALGORITHM,
        wrapped_dek=_unb64(_field(key, "wrapped_dek", str, "key"), "wrapped_dek"),
    )
    return SealedHeader(sealed_content, tag, wrap)
