"""Secure Key Release's transport format: the ``key_hsm`` blob and the signed release response.

Key Vault answers a successful release with ``{"value": JWS}``. The JWS is signed by the vault (header
``x5c``: its signing certificate and chain) and its payload carries the released key as a JWK whose
private part is not in the clear but in ``key_hsm``::

    payload.response.key.key.key_hsm = base64url(JSON {
        "schema_version": "1.0",
        "header": {"alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP", "kid": <the TEE key's kid>},
        "ciphertext": base64url(RSA-OAEP(transient AES-256 key) || AES-KWP(transient key, key material))})

This is PKCS#11's CKM_RSA_AES_KEY_WRAP: the OAEP hash is SHA-1 for ``CKM_RSA_AES_KEY_WRAP``, SHA-256 for
``RSA_AES_KEY_WRAP_256`` and SHA-384 for ``RSA_AES_KEY_WRAP_384``; AES-KWP is RFC 5649 key wrap with
padding. For an RSA key the material wrapped is the private key as a PKCS#8 ``PrivateKeyInfo`` (DER) — the
form CKM_RSA_AES_KEY_WRAP wraps private keys in, and the one Key Vault's BYOK import takes in the other
direction.

:func:`wrap_key_material` is the vault's half (the Key Vault stand-in uses it), :func:`unwrap_released_key`
the TEE's: it trusts the response only when the signature verifies with a certificate that chains to a
root it was configured with, and only the TEE's private key (made in memory, attested through
REPORT_DATA) can open ``key_hsm``.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from securetrain.errors import SecurityViolation

log = logging.getLogger(__name__)

KEY_HSM_SCHEMA_VERSION = "1.0"
#: The release's key-wrapping algorithms and the OAEP hash each uses for the transient AES key.
WRAP_ALGORITHMS: Mapping[str, type[hashes.HashAlgorithm]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}
DEFAULT_WRAP_ALGORITHM = "CKM_RSA_AES_KEY_WRAP"
#: Signature algorithms accepted on the release response: Azure signs with RS256; the local vault signs
#: with the ECDSA P-256 key of its stack-CA certificate (ES256).
RESPONSE_ALGORITHMS = ("RS256", "PS256", "ES256", "ES384")
_TRANSIENT_KEY_BYTES = 32


class ReleasedKeyRejected(SecurityViolation):
    """The release response or its ``key_hsm`` failed a check; the message says which. Nothing is returned."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ReleasedKeyRejected(f"{what} is not a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise ReleasedKeyRejected(f"{what} is not valid base64url") from None


def _oaep(algorithm: str) -> padding.OAEP:
    try:
        digest = WRAP_ALGORITHMS[algorithm]()
    except KeyError:
        raise ReleasedKeyRejected(
            f"key wrap algorithm {algorithm!r} is not one of {', '.join(WRAP_ALGORITHMS)}"
        ) from None
    return padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)


def wrap_key_material(
    material: bytes, wrapping_key: rsa.RSAPublicKey, *, algorithm: str = DEFAULT_WRAP_ALGORITHM, wrapping_kid: str
) -> str:
    """``key_hsm`` for ``material`` wrapped to ``wrapping_key`` (the TEE's runtime key) with ``algorithm``."""
    transient = os.urandom(_TRANSIENT_KEY_BYTES)
    ciphertext = wrapping_key.encrypt(transient, _oaep(algorithm)) + keywrap.aes_key_wrap_with_padding(
        transient, material
    )
    blob = {
        "schema_version": KEY_HSM_SCHEMA_VERSION,
        "header": {"alg": "dir", "enc": algorithm, "kid": wrapping_kid},
        "ciphertext": _b64url(ciphertext),
    }
    return _b64url(json.dumps(blob, separators=(",", ":")).encode())


def unwrap_key_hsm(key_hsm: str, tee_private_key: rsa.RSAPrivateKey) -> bytes:
    """The key material inside ``key_hsm``, unwrapped with the TEE's private key."""
    try:
        blob = json.loads(_unb64url(key_hsm, "key_hsm"))
    except ValueError:
        raise ReleasedKeyRejected("key_hsm does not decode to JSON") from None
    if not isinstance(blob, dict) or blob.get("schema_version") != KEY_HSM_SCHEMA_VERSION:
        raise ReleasedKeyRejected(f"key_hsm is not schema version {KEY_HSM_SCHEMA_VERSION}")
    header = blob.get("header")
    if not isinstance(header, dict) or header.get("alg") != "dir":
        raise ReleasedKeyRejected("key_hsm's header is missing or its alg is not 'dir'")
    oaep = _oaep(header.get("enc"))  # type: ignore[arg-type]
    ciphertext = _unb64url(blob.get("ciphertext"), "key_hsm's ciphertext")
    split = tee_private_key.key_size // 8
    if len(ciphertext) <= split:
        raise ReleasedKeyRejected(f"key_hsm's ciphertext is {len(ciphertext)} bytes: too short to hold a wrapped key")
    try:
        transient = tee_private_key.decrypt(ciphertext[:split], oaep)
        return keywrap.aes_key_unwrap_with_padding(transient, ciphertext[split:])
    except ValueError:
        raise ReleasedKeyRejected(
            "key_hsm was not wrapped to this TEE's key (RSA-OAEP decryption failed)"
        ) from None
    except InvalidUnwrap:
        raise ReleasedKeyRejected("key_hsm's wrapped key material fails its AES key-wrap integrity check") from None


def _load_chain(header: Mapping[str, Any]) -> list[x509.Certificate]:
    entries = header.get("x5c")
    if not isinstance(entries, list) or not entries:
        raise ReleasedKeyRejected("the release response's header carries no certificate chain (x5c)")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(entry, validate=True)) for entry in entries]
    except (TypeError, ValueError) as exc:
        raise ReleasedKeyRejected(f"the release response's x5c does not hold DER certificates: {exc}") from None


def _within_validity(certificate: x509.Certificate, now: datetime.datetime) -> None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise ReleasedKeyRejected(f"certificate {certificate.subject.rfc4514_string()} is not valid now")


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_signer_chain(chain: Sequence[x509.Certificate], trusted_roots: Sequence[x509.Certificate]) -> None:
    """Check that ``chain`` (leaf first) chains to one of ``trusted_roots`` and is valid now."""
    if not trusted_roots:
        raise ReleasedKeyRejected("no trusted vault root is configured: a release response cannot be trusted")
    now = datetime.datetime.now(datetime.timezone.utc)
    for certificate in chain:
        _within_validity(certificate, now)
    for child, parent in zip(chain, chain[1:]):
        constraints = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca or not _issued_by(child, parent):
            raise ReleasedKeyRejected(f"x5c is not a chain: {child.subject.rfc4514_string()} is not issued by the next")
    top = chain[-1]
    if not any(top == root or _issued_by(top, root) for root in trusted_roots):
        raise ReleasedKeyRejected(
            f"the release response is signed by {chain[0].subject.rfc4514_string()}, whose chain does not end "
            "at a trusted vault root"
        )


def verify_release_response(jws: str, trusted_roots: Sequence[x509.Certificate]) -> dict[str, Any]:
    """The payload of a release response whose signature chains to ``trusted_roots``."""
    try:
        header = jwt.get_unverified_header(jws)
    except jwt.DecodeError as exc:
        raise ReleasedKeyRejected(f"the release response is not a JWS: {exc}") from None
    algorithm = header.get("alg")
    if algorithm not in RESPONSE_ALGORITHMS:
        raise ReleasedKeyRejected(f"the release response is signed with {algorithm!r}, not one of {RESPONSE_ALGORITHMS}")
    chain = _load_chain(header)
    verify_signer_chain(chain, trusted_roots)
    try:
        payload = jwt.api_jws.decode(jws, key=chain[0].public_key(), algorithms=[algorithm])  # type: ignore[arg-type]
    except jwt.InvalidTokenError as exc:
        raise ReleasedKeyRejected(f"the release response's signature does not verify: {exc}") from None
    try:
        document = json.loads(payload)
    except ValueError:
        raise ReleasedKeyRejected("the release response's payload is not JSON") from None
    if not isinstance(document, dict):
        raise ReleasedKeyRejected("the release response's payload is not a JSON object")
    return document


def unwrap_released_key(
    jws: str,
    tee_private_key: rsa.RSAPrivateKey,
    trusted_vault_roots: Sequence[x509.Certificate],
    *,
    expected_key_id: str | None = None,
) -> rsa.RSAPrivateKey:
    """The RSA private key a release response carries, for use as :class:`securetrain.sealed.KekPrivateKey`.

    Checks, in order: the JWS signature and its chain to ``trusted_vault_roots``; that the released key is
    ``expected_key_id`` (a versioned key URL) when given; that ``key_hsm`` unwraps with ``tee_private_key``;
    that the unwrapped private key is the one whose public half (``n``, ``e``) the response names.

    Raises:
        ReleasedKeyRejected: any check failed; the message says which.
    """
    payload = verify_release_response(jws, trusted_vault_roots)
    try:
        jwk = payload["response"]["key"]["key"]
    except (KeyError, TypeError):
        raise ReleasedKeyRejected("the release response carries no key (response.key.key)") from None
    if not isinstance(jwk, dict):
        raise ReleasedKeyRejected("the release response's key is not a JWK object")
    if expected_key_id is not None and jwk.get("kid") != expected_key_id:
        raise ReleasedKeyRejected(f"the vault released {jwk.get('kid')!r}, not the key asked for ({expected_key_id})")
    if jwk.get("kty") not in ("RSA", "RSA-HSM"):
        raise ReleasedKeyRejected(f"the released key is of type {jwk.get('kty')!r}; a KEK is RSA")
    material = unwrap_key_hsm(jwk.get("key_hsm"), tee_private_key)  # type: ignore[arg-type]
    try:
        private_key = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError):
        raise ReleasedKeyRejected("the released key material is not a PKCS#8 private key") from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ReleasedKeyRejected(f"the released key is a {type(private_key).__name__}, not an RSA private key")
    numbers = private_key.public_key().public_numbers()
    named = (
        int.from_bytes(_unb64url(jwk.get("n"), "the released key's n"), "big"),
        int.from_bytes(_unb64url(jwk.get("e"), "the released key's e"), "big"),
    )
    if (numbers.n, numbers.e) != named:
        raise ReleasedKeyRejected("the released private key does not match the public key the response names")
    log.info("released key %s unwrapped in the TEE", jwk.get("kid"))
    return private_key
