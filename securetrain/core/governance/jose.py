"""Compact JWS (RFC 7515) as the contract's parties sign with it: Ed25519 keys, made and checked with joserfc.

Signing and verification are joserfc's (a maintained JOSE implementation with RFC 7515 Appendix F detached
content and RFC 9864's fully specified ``Ed25519`` algorithm); what is ours is how strict a token must be
before it gets there: the three segments in canonical base64url, a protected header that is strict JSON
(:mod:`securetrain.core.json_input`) and holds exactly the parameters the document type names, the one
algorithm, and an empty payload segment where the payload is detached, so a token cannot bring its own
payload to a check that supplies one. Every failure is :class:`JwsRefused` with a reason, which the caller
turns into its own error naming the party or the file.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import OKPKey
from joserfc.registry import HeaderParameter

from securetrain.core.errors import SecuretrainError
from securetrain.core.governance.contract import MAX_CONTRACT_BYTES, SigningKey
from securetrain.core.json_input import JsonInputError, read_json_object

#: RFC 9864's name for EdDSA over Ed25519 (it deprecates the polymorphic ``EdDSA``); the signature bytes are
#: the same, the name says which curve a verifier must use.
ALGORITHM = "Ed25519"
#: The protected header's own parameter that names the contract a signature is for.
DIGEST_PARAMETER = "contract_digest"
_MAX_HEADER_BYTES = 1024
_SEGMENT = r"[A-Za-z0-9_-]*"
_COMPACT = re.compile(rf"({_SEGMENT})\.({_SEGMENT})\.({_SEGMENT})")

_REGISTRY = jws.JWSRegistry(
    header_registry={DIGEST_PARAMETER: HeaderParameter("SHA-256 of the signed contract's canonical JSON", "str")},
    algorithms=[ALGORITHM],
)
# joserfc's default bound (128 kB) is below what a contract may be; ours is checked before parsing.
_REGISTRY.max_payload_length = MAX_CONTRACT_BYTES


class JwsRefused(SecuretrainError):
    """A token is not a compact JWS of the expected form, or its signature does not verify; the message says why."""


def _decode(segment: str, what: str) -> bytes:
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise JwsRefused(f"its {what} is not base64url") from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != segment:
        raise JwsRefused(f"its {what} is not canonical unpadded base64url")
    return decoded


def protected_header(token: str, *, parameters: Mapping[str, type]) -> dict[str, Any]:
    """The protected header of compact JWS ``token``: exactly ``alg``, ``typ`` and ``parameters`` (each a
    string unless the mapping says otherwise), ``alg`` being :data:`ALGORITHM`."""
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise JwsRefused("it is not a compact JWS (three base64url segments separated by '.')")
    if len(match.group(1)) > _MAX_HEADER_BYTES:
        raise JwsRefused(f"its protected header is longer than {_MAX_HEADER_BYTES} bytes")
    try:
        header = read_json_object(_decode(match.group(1), "protected header"), max_bytes=_MAX_HEADER_BYTES,
                                  what="its protected header")  # fmt: skip
    except JsonInputError as exc:
        raise JwsRefused(str(exc)) from None
    expected = {"alg": str, "typ": str, **parameters}
    if set(header) != set(expected):
        raise JwsRefused(f"its protected header has {sorted(header)}; it must have exactly {sorted(expected)}")
    for name, kind in expected.items():
        if not isinstance(header[name], kind):
            raise JwsRefused(f"its header parameter {name!r} is not a {kind.__name__}")
    if header["alg"] != ALGORITHM:
        raise JwsRefused(f"it is signed with {header['alg']!r}; only {ALGORITHM!r} is accepted")
    return header


def sign(header: Mapping[str, str], payload: bytes, key: Ed25519PrivateKey, *, detached: bool) -> str:
    """A compact JWS of ``payload`` under ``header`` (plus ``alg``); its payload segment emptied if ``detached``."""
    token = jws.serialize_compact({"alg": ALGORITHM, **header}, payload, OKPKey.import_key(key), registry=_REGISTRY)
    return jws.detach_content(token) if detached else token


def verify(token: str, key: SigningKey, *, detached_payload: bytes | None = None) -> bytes:
    """Check ``token``'s signature with ``key`` (its header checked by :func:`protected_header` first) and
    return the payload it signs: ``detached_payload``, whose token must carry an empty payload segment, or
    the payload it carries, which must not be empty."""
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise JwsRefused("it is not a compact JWS (three base64url segments separated by '.')")
    payload_segment = match.group(2)
    if detached_payload is not None and payload_segment:
        raise JwsRefused("it carries a payload; its payload must be detached (RFC 7515 Appendix F)")
    if detached_payload is None and not payload_segment:
        raise JwsRefused("it carries no payload")
    if payload_segment:
        _decode(payload_segment, "payload")
    try:
        public = OKPKey.import_key(key.to_json())
        signed = jws.deserialize_compact(token, public, registry=_REGISTRY, payload=detached_payload)
    except JoseError as exc:
        reason = "the signature does not verify" if isinstance(exc, BadSignatureError) else str(exc)
        raise JwsRefused(reason) from None
    except ValueError as exc:
        raise JwsRefused(f"joserfc refused it: {exc}") from None
    return signed.payload
