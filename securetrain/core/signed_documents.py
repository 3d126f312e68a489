"""JSON documents signed with Ed25519: what a data owner, the pipeline or an auditor signs and others check.

A signed document is a JSON object with a ``signatures`` list; each entry signs the RFC 8785 canonical
bytes of the object *without* its ``signatures``, so several parties can sign the same document and a
signature says nothing about the others::

    {"...": "...", "signatures": [{"algorithm": "Ed25519", "key_id": "<64 hex>", "value": "<128 hex>"}]}

``key_id`` is the SHA-256 of the raw public key. The value is hex rather than base64 so that one
signature has exactly one spelling (base64's padding bits would let a stored byte change without
changing what it decodes to). Verification is against a public key the verifier already holds (pinned);
a key carried in the document itself would prove nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securetrain.core.errors import ConfigurationError, SecurityViolation

ALGORITHM = "Ed25519"
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{128}")


class SignatureInvalid(SecurityViolation):
    """A signed document lacks the expected signature, or its signature does not verify."""


class PublicKeyInvalid(ConfigurationError):
    """A public key file cannot be read or is not an Ed25519 PEM public key."""


def load_public_key(path: Path, what: str) -> Ed25519PublicKey:
    """The Ed25519 public key (PEM SubjectPublicKeyInfo) in ``path``; ``what`` names it in errors."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise PublicKeyInvalid(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise PublicKeyInvalid(f"{what} {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PublicKeyInvalid(f"{what} {path} holds a {type(key).__name__}; it must be an Ed25519 key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: names the key a signature was made with."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def signing_bytes(document: Mapping[str, Any]) -> bytes:
    """What a signature covers: the document's canonical JSON without its ``signatures``."""
    return rfc8785.dumps({key: value for key, value in document.items() if key != "signatures"})


def signature_entry(key: Ed25519PrivateKey, document: Mapping[str, Any]) -> dict[str, str]:
    return {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()), "value": key.sign(signing_bytes(document)).hex()}


def sign(key: Ed25519PrivateKey, document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` with ``key``'s signature added to its ``signatures`` (a signature by the same key replaced)."""
    mine = key_id(key.public_key())
    others = [entry for entry in document.get("signatures", []) if entry.get("key_id") != mine]
    return {**document, "signatures": [*others, signature_entry(key, document)]}


def verify(document: Mapping[str, Any], public_key: Ed25519PublicKey, *, what: str, signer: str = "the key") -> None:
    """Check that ``document`` carries a valid signature by ``public_key``; ``what`` and ``signer`` name the
    document and the key in errors.

    Raises:
        SignatureInvalid: no signature by that key, a malformed one, or one that does not verify.
    """
    signatures = document.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise SignatureInvalid(f"{what} carries no signature")
    wanted = key_id(public_key)
    mine = [entry for entry in signatures if isinstance(entry, Mapping) and entry.get("key_id") == wanted]
    if not mine:
        raise SignatureInvalid(f"{what} is not signed by {signer} {wanted[:16]}…")
    for entry in mine:
        value = entry.get("value", "")
        if entry.get("algorithm") != ALGORITHM or not isinstance(value, str) or not _HEX_SIGNATURE.fullmatch(value):
            raise SignatureInvalid(f"the signature on {what} is malformed")
        try:
            public_key.verify(bytes.fromhex(value), signing_bytes(document))
        except InvalidSignature:
            raise SignatureInvalid(f"the signature on {what} does not verify: it was changed after it was signed") from None
