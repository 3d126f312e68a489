"""The service's token-signing keys: persisted, published, rolled over without breaking live tokens; and the signer.

A store holds the keys of one algorithm: RS256 keys (RSA 2048) for MAA's tokens, which MAA publishes in
``/certs`` as certificates in ``x5c`` (the Azure SDK validates against ``x5c[0]``); ES384 keys (P-384) for the
GPU service's tokens, which NVIDIA's NRAS publishes in ``/.well-known/jwks.json`` as EC JWKs (``crv``, ``x``,
``y``) with their certificate in ``x5c``. Each key has a self-signed certificate. The newest key signs; a key
rolled over stays published until every token it signed has expired, so relying parties never see a valid
token whose key has vanished.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from securetrain.core.attestation.tokens import ES384, RS256
from securetrain.core.fsutil import atomic_output


def _b64url(value: int, length: int | None = None) -> str:
    raw = value.to_bytes(length or (value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    created_at: float
    retired_at: float | None

    @property
    def algorithm(self) -> str:
        return ES384 if isinstance(self.private_key, ec.EllipticCurvePrivateKey) else RS256

    def jwk(self) -> dict[str, object]:
        """The key as it is published: ``kid``, ``kty``, ``x5c`` (MAA's and NRAS's shape) and the public numbers
        (``n``/``e`` of an RSA key; ``crv``/``x``/``y`` of a P-384 key, fixed-length as RFC 7518 says)."""
        x5c = [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()]
        public = self.private_key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            point = public.public_numbers()
            return {"kid": self.kid, "kty": "EC", "alg": ES384, "use": "sig", "crv": "P-384",
                    "x": _b64url(point.x, 48), "y": _b64url(point.y, 48), "x5c": x5c}  # fmt: skip
        numbers = public.public_numbers()
        return {"kid": self.kid, "kty": "RSA", "alg": RS256, "use": "sig",
                "n": _b64url(numbers.n), "e": _b64url(numbers.e), "x5c": x5c}  # fmt: skip


class SigningKeyStore:
    """Signing keys of ``algorithm`` under ``<directory>``: ``<kid>.key.pem``, ``<kid>.cert.pem`` and ``keys.json``."""

    def __init__(self, directory: Path, *, token_lifetime: int, algorithm: str = RS256) -> None:
        if algorithm not in (RS256, ES384):
            raise ValueError(f"no signing keys for {algorithm!r}")
        self._dir = directory
        self._token_lifetime = token_lifetime
        self.algorithm = algorithm
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._keys = self._load()
        if not self._keys:
            self.roll_over()

    @property
    def current(self) -> SigningKey:
        return max((k for k in self._keys if k.retired_at is None), key=lambda k: k.created_at)

    def published(self, now: float | None = None) -> list[SigningKey]:
        """The keys whose tokens may still be valid: the current one and recently retired ones."""
        now = time.time() if now is None else now
        return [k for k in self._keys if k.retired_at is None or k.retired_at + self._token_lifetime > now]

    def roll_over(self) -> SigningKey:
        """Make a new signing key current; the previous one is retired but stays published."""
        now = time.time()
        self._keys = [
            SigningKey(k.kid, k.private_key, k.certificate, k.created_at, k.retired_at or now) for k in self._keys
        ]
        key = self._new_key(now)
        self._keys.append(key)
        self._save()
        return key

    def _new_key(self, now: float) -> SigningKey:
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            ec.generate_private_key(ec.SECP384R1()) if self.algorithm == ES384
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )  # fmt: skip
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"securetrain local attestation token signing ({self.algorithm})")])
        start = dt.datetime.fromtimestamp(now, dt.timezone.utc) - dt.timedelta(minutes=5)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(private_key, hashes.SHA384() if self.algorithm == ES384 else hashes.SHA256())
        )
        der = certificate.public_bytes(serialization.Encoding.DER)
        kid = hashlib.sha256(der).hexdigest()[:32]
        key_path = self._dir / f"{kid}.key.pem"
        with atomic_output(key_path, mode=0o600) as out:
            out.write(
                private_key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        with atomic_output(self._dir / f"{kid}.cert.pem", mode=0o644) as out:
            out.write(certificate.public_bytes(serialization.Encoding.PEM))
        return SigningKey(kid, private_key, certificate, now, None)

    def _save(self) -> None:
        index = [{"kid": k.kid, "created_at": k.created_at, "retired_at": k.retired_at} for k in self._keys]
        with atomic_output(self._dir / "keys.json", mode=0o644) as out:
            out.write(json.dumps(index, indent=2).encode())

    def _load(self) -> list[SigningKey]:
        index_path = self._dir / "keys.json"
        if not index_path.exists():
            return []
        keys = []
        for entry in json.loads(index_path.read_text()):
            kid = entry["kid"]
            private_key = serialization.load_pem_private_key((self._dir / f"{kid}.key.pem").read_bytes(), None)
            certificate = x509.load_pem_x509_certificate((self._dir / f"{kid}.cert.pem").read_bytes())
            key = SigningKey(kid, private_key, certificate, entry["created_at"], entry["retired_at"])  # type: ignore[arg-type]
            if key.algorithm != self.algorithm:
                raise ValueError(f"{self._dir} holds {key.algorithm} key {kid}, not an {self.algorithm} key")
            keys.append(key)
        return keys


class TokenSigner:
    """Signs the service's tokens (attestation results, policy results) as ``issuer``, with the current key of
    ``keys`` in its algorithm; ``jku``, where given, goes into each header (MAA names its ``/certs`` there, NRAS
    names nothing but the ``kid``)."""

    def __init__(self, keys: SigningKeyStore, issuer: str, lifetime_s: int, *, jku: str | None = None) -> None:
        self._keys = keys
        self.issuer = issuer
        self._lifetime = lifetime_s
        self._jku = jku

    def sign(self, claims: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The token carrying ``claims`` plus ``iss``, ``iat``, ``nbf``, ``exp`` and a fresh ``jti``, and those
        complete claims; the header names the key (``kid``)."""
        now = int(time.time())
        complete = {"iss": self.issuer, "iat": now, "nbf": now, "exp": now + self._lifetime,
                    "jti": secrets.token_hex(16), **claims}  # fmt: skip
        signer = self._keys.current
        headers = {"kid": signer.kid, "typ": "JWT"} | ({"jku": self._jku} if self._jku else {})
        token = jwt.encode(complete, signer.private_key, algorithm=self._keys.algorithm, headers=headers)
        return token, complete
