"""Secure Key Release in the vault: check the attestation token against the key's policy, wrap, sign.

The checks, in the order docs/keys.md ("Secure Key Release") lists them, each failure a :class:`ReleaseRefused`
naming the condition; the token's issuer is read unverified only to choose whose keys to verify it with. The
response is Key Vault's: a JWS holding the key as a JWK with ``key_hsm`` (:func:`securetrain.core.skr.wrap_key_material`),
signed with the vault's certificate key, the certificate in ``x5c``.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from securetrain.localstack.standins.keyvault.store import KeyVersion
from securetrain.core.attestation.tokens import AuthorityKeys, AuthorityUnreachable, TokenRejected, TokenValidator
from securetrain.core.release_policy import ReleaseDenied, ReleasePolicy, ReleasePolicyInvalid, evaluate
from securetrain.core.skr import DEFAULT_WRAP_ALGORITHM, WRAP_ALGORITHMS, wrap_key_material


class ReleaseRefused(Exception):
    """A release check failed. ``status`` is the HTTP status to answer (400 or 403)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def _b64url_uint(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def _runtime_rsa_key(runtime_keys: list[Mapping[str, Any]]) -> tuple[str, rsa.RSAPublicKey]:
    for jwk in runtime_keys:
        if jwk.get("kty") in ("RSA", "RSA-HSM") and isinstance(jwk.get("n"), str) and isinstance(jwk.get("e"), str):
            try:
                n = int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=" * (-len(jwk["n"]) % 4)), "big")
                e = int.from_bytes(base64.urlsafe_b64decode(jwk["e"] + "=" * (-len(jwk["e"]) % 4)), "big")
                public_key = rsa.RSAPublicNumbers(e, n).public_key()
            except ValueError:
                continue
            if public_key.key_size >= 2048:
                return str(jwk.get("kid", "")), public_key
    raise ReleaseRefused("the attestation token carries no RSA runtime key of 2048 bits or more (x-ms-runtime.keys) to wrap the key to")


class ReleaseSigner:
    """The vault's signing key and certificate for release responses."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self._key = private_key
        der = certificate.public_bytes(serialization.Encoding.DER)
        self._header = {
            "x5c": [base64.b64encode(der).decode()],
            "x5t#S256": base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode(),
        }

    @classmethod
    def from_files(cls, cert_path: str, key_path: str) -> ReleaseSigner:
        with open(cert_path, "rb") as cert_file, open(key_path, "rb") as key_file:
            certificate = x509.load_pem_x509_certificate(cert_file.read())
            key = serialization.load_pem_private_key(key_file.read(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC key; the release signer signs ES256")
        return cls(key, certificate)

    def sign(self, payload: Mapping[str, Any]) -> str:
        return jwt.encode(dict(payload), self._key, algorithm="ES256", headers=self._header)


class KeyReleaser:
    """Performs releases; caches one token validator per attestation authority."""

    def __init__(self, ca_bundle: str, signer: ReleaseSigner) -> None:
        self._ca_bundle = ca_bundle
        self._signer = signer
        self._validators: dict[str, TokenValidator] = {}
        self._lock = threading.Lock()

    def _validator(self, authority: str) -> TokenValidator:
        with self._lock:
            if authority not in self._validators:
                self._validators[authority] = TokenValidator(AuthorityKeys(authority, verify=self._ca_bundle))
            return self._validators[authority]

    def release(
        self,
        version: KeyVersion,
        private_key_der: bytes,
        key_id: str,
        *,
        target: str,
        enc: str | None,
        nonce: str | None,
        api_version: str,
        key_bundle: Mapping[str, Any],
    ) -> str:
        """The JWS releasing ``version`` (its private key as PKCS#8 DER) to the TEE ``target`` vouches for."""
        if not version.exportable:
            raise ReleaseRefused(f"key {key_id} is not exportable: a non-exportable key is never released")
        if version.release_policy is None:
            raise ReleaseRefused(f"key {key_id} has no release policy: it is never released")
        unusable = version.usable_now()
        if unusable:
            raise ReleaseRefused(f"key {key_id} cannot be released: {unusable}")
        algorithm = enc or DEFAULT_WRAP_ALGORITHM
        if algorithm not in WRAP_ALGORITHMS:
            raise ReleaseRefused(f"enc {algorithm!r} is not one of {', '.join(WRAP_ALGORITHMS)}", status=400)
        try:
            policy = ReleasePolicy.parse(version.release_policy)
        except ReleasePolicyInvalid as exc:
            raise ReleaseRefused(f"key {key_id}'s release policy cannot be evaluated: {exc}") from None
        try:
            issuer = jwt.decode(target, options={"verify_signature": False}).get("iss")
        except jwt.DecodeError as exc:
            raise ReleaseRefused(f"target is not an attestation token (JWT): {exc}", status=400) from None
        if not isinstance(issuer, str) or not policy.rules_for(issuer):
            known = ", ".join(entry.authority for entry in policy.authorities)
            raise ReleaseRefused(f"the attestation token's issuer {issuer!r} is not an authority of the release policy ({known})")
        try:
            token = self._validator(issuer.rstrip("/")).validate(target)
            evaluate(policy, token.claims)
        except (TokenRejected, ReleaseDenied) as exc:
            raise ReleaseRefused(f"attestation token rejected: {exc}") from None
        except AuthorityUnreachable as exc:
            # Fail closed: a token whose signature cannot be checked releases nothing.
            raise ReleaseRefused(f"the attestation token cannot be verified: {exc}") from None
        wrapping_kid, wrapping_key = _runtime_rsa_key(token.runtime_keys)
        released_jwk = {
            "kid": key_id,
            "kty": version.kty,
            "key_ops": list(version.key_ops),
            "n": _b64url_uint(version.public_numbers.n),
            "e": _b64url_uint(version.public_numbers.e),
            "key_hsm": wrap_key_material(private_key_der, wrapping_key, algorithm=algorithm, wrapping_kid=wrapping_kid),
        }
        request: dict[str, Any] = {"api-version": api_version, "enc": algorithm, "kid": key_id}
        if nonce is not None:
            request["nonce"] = nonce
        response_key = {**key_bundle, "key": released_jwk}
        return self._signer.sign({"request": request, "response": {"key": response_key}})
