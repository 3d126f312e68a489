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
the TEE's: it trusts the response only when the signature verifies with a TLS server certificate for the
vault's own host (the host of the key id asked for) that chains to a root it was configured with
(pyca/cryptography's X.509 path validation, the same checks a TLS client makes), and only the TEE's
private key (made in memory, attested through REPORT_DATA) can open ``key_hsm``. Any other certificate
from the same roots (a client certificate the pipeline holds, another service's server certificate) does
not make a release response.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from securetrain.core.errors import SecurityViolation

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
#: Key Vault's RSA key sizes run from 2048 to 4096 bits; a released key outside them is refused before any use.
RELEASED_RSA_BITS = range(2048, 4097)
_PROBE_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


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


def _server_name(host: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def verify_signer_chain(chain: Sequence[x509.Certificate], trusted_roots: Sequence[x509.Certificate], host: str) -> None:
    """Check that ``chain`` (leaf first) is a TLS server certificate for ``host`` chaining to ``trusted_roots``.

    RFC 5280 path validation and the CA/Browser Forum server profile as pyca/cryptography implements them:
    validity now, issuers that are CAs, the serverAuth extended key usage, ``host`` among the leaf's subject
    alternative names. Revocation is not checked.
    """
    if not trusted_roots:
        raise ReleasedKeyRejected("no trusted vault root is configured: a release response cannot be trusted")
    name = _server_name(host)
    try:
        verifier = (
            PolicyBuilder().store(Store(list(trusted_roots))).time(datetime.datetime.now(datetime.timezone.utc))
            .build_server_verifier(name)
        )  # fmt: skip
        verifier.verify(chain[0], list(chain[1:]))
    except (VerificationError, ValueError) as exc:  # ValueError: a certificate pyca cannot even evaluate
        raise ReleasedKeyRejected(
            f"the release response is signed by {chain[0].subject.rfc4514_string()}, which is not a TLS server "
            f"certificate for the vault's host {host} chaining to a trusted vault root: {exc}"
        ) from None


def verify_release_response(jws: str, trusted_roots: Sequence[x509.Certificate], host: str) -> dict[str, Any]:
    """The payload of a release response signed by a server certificate for ``host`` under ``trusted_roots``."""
    try:
        header = jwt.get_unverified_header(jws)
    except jwt.DecodeError as exc:
        raise ReleasedKeyRejected(f"the release response is not a JWS: {exc}") from None
    algorithm = header.get("alg")
    if algorithm not in RESPONSE_ALGORITHMS:
        raise ReleasedKeyRejected(f"the release response is signed with {algorithm!r}, not one of {RESPONSE_ALGORITHMS}")
    chain = _load_chain(header)
    verify_signer_chain(chain, trusted_roots, host)
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


@dataclass(frozen=True)
class ReleasedKey:
    """A key Key Vault released to the TEE: its id, its private half, and when the vault says it was created."""

    kid: str
    private_key: rsa.RSAPrivateKey
    #: ``response.key.attributes.created`` (Unix seconds) as the vault signed it; None if it says nothing.
    created: int | None

    def __repr__(self) -> str:
        return f"ReleasedKey(kid={self.kid!r}, created={self.created})"  # never the key material


def open_release_response(
    jws: str, tee_private_key: rsa.RSAPrivateKey, trusted_vault_roots: Sequence[x509.Certificate], *, expected_key_id: str
) -> ReleasedKey:
    """The key a release response carries, once every check passed.

    Checks, in order: the JWS signature, by a TLS server certificate for the host of ``expected_key_id`` (the
    vault asked) that chains to ``trusted_vault_roots``; that the released key is ``expected_key_id`` (a
    versioned key URL); that ``key_hsm`` unwraps with ``tee_private_key``; that the unwrapped private key is
    the one whose public half (``n``, ``e``) the response names, and a consistent RSA key
    (:func:`_load_released_rsa_key`).

    Raises:
        ReleasedKeyRejected: any check failed; the message says which.
    """
    host = urlsplit(expected_key_id).hostname
    if not host:
        raise ReleasedKeyRejected(f"the key id {expected_key_id!r} names no vault host")
    payload = verify_release_response(jws, trusted_vault_roots, host)
    try:
        bundle = payload["response"]["key"]
        jwk = bundle["key"]
    except (KeyError, TypeError):
        raise ReleasedKeyRejected("the release response carries no key (response.key.key)") from None
    if not isinstance(jwk, dict):
        raise ReleasedKeyRejected("the release response's key is not a JWK object")
    if jwk.get("kid") != expected_key_id:
        raise ReleasedKeyRejected(f"the vault released {jwk.get('kid')!r}, not the key asked for ({expected_key_id})")
    if jwk.get("kty") not in ("RSA", "RSA-HSM"):
        raise ReleasedKeyRejected(f"the released key is of type {jwk.get('kty')!r}; a KEK is RSA")
    named = (
        int.from_bytes(_unb64url(jwk.get("n"), "the released key's n"), "big"),
        int.from_bytes(_unb64url(jwk.get("e"), "the released key's e"), "big"),
    )
    material = unwrap_key_hsm(jwk.get("key_hsm"), tee_private_key)  # type: ignore[arg-type]
    private_key = _load_released_rsa_key(material, named)
    attributes = bundle.get("attributes") if isinstance(bundle, dict) else None
    created = attributes.get("created") if isinstance(attributes, dict) else None
    log.info("released key %s unwrapped in the TEE", expected_key_id)
    return ReleasedKey(
        expected_key_id, private_key, created if isinstance(created, int) and not isinstance(created, bool) else None
    )


def _load_released_rsa_key(material: bytes, named: tuple[int, int]) -> rsa.RSAPrivateKey:
    """The RSA private key in ``material`` (PKCS#8 DER), once it is shown to be the key pair ``named`` (n, e).

    OpenSSL's full RSA key validation (primality of p and q, every CRT parameter) costs ~140 ms for RSA-3072,
    most of a job's key path, and guards against keys from an untrusted source, which this is not: the
    material reaches this point only inside a release response whose signature by the vault's own TLS
    certificate verified, for the key id asked for, wrapped to a key only this TEE holds (docs/keys.md, "Loading
    the released key"). It is loaded unvalidated, and what a faulty key could still get wrong is checked
    directly, in well under 2 ms: its size is one Key Vault makes, its public half is the one the response
    names, p and q are non-trivial factors of n, and it decrypts what its public half encrypts (RSA-OAEP of a
    random probe, the operation the TEE uses the key for).
    """
    try:
        private_key = serialization.load_der_private_key(material, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError):
        raise ReleasedKeyRejected("the released key material is not a PKCS#8 private key") from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ReleasedKeyRejected(f"the released key is a {type(private_key).__name__}, not an RSA private key")
    if private_key.key_size not in RELEASED_RSA_BITS:
        raise ReleasedKeyRejected(f"the released key has {private_key.key_size} bits; Key Vault makes 2048 to 4096")
    numbers = private_key.private_numbers()
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    if (n, e) != named:
        raise ReleasedKeyRejected("the released private key does not match the public key the response names")
    if not (1 < numbers.p < n and 1 < numbers.q < n and numbers.p * numbers.q == n):
        raise ReleasedKeyRejected("the released private key is inconsistent: its primes do not factor its modulus")
    probe = os.urandom(_TRANSIENT_KEY_BYTES)
    try:
        opened = private_key.decrypt(private_key.public_key().encrypt(probe, _PROBE_OAEP), _PROBE_OAEP)
    except ValueError:
        opened = None
    if opened != probe:
        raise ReleasedKeyRejected(
            "the released private key is inconsistent: it does not decrypt what its public half encrypts"
        )
    return private_key


def unwrap_released_key(
    jws: str, tee_private_key: rsa.RSAPrivateKey, trusted_vault_roots: Sequence[x509.Certificate], *, expected_key_id: str
) -> rsa.RSAPrivateKey:
    """The RSA private key a release response carries (:func:`open_release_response`'s checks)."""
    return open_release_response(jws, tee_private_key, trusted_vault_roots, expected_key_id=expected_key_id).private_key
