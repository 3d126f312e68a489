"""The service's token-signing keys: persisted, published, rolled over without breaking live tokens; and the signer.

Each key is an RSA 2048 key with a self-signed certificate (MAA publishes certificates in ``x5c``,
and the Azure SDK validates against ``x5c[0]``). The newest key signs; a key rolled over stays in
``/certs`` until every token it signed has expired, so relying parties never see a valid token whose
key has vanished.
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
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from securetrain.core.fsutil import atomic_output


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    created_at: float
    retired_at: float | None

    def jwk(self) -> dict[str, object]:
        """The key as ``/certs`` publishes it: MAA's shape (``kid``, ``kty``, ``x5c``) plus ``n``/``e``."""
        numbers = self.private_key.public_key().public_numbers()

        def b64url(value: int) -> str:
            raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        return {
            "kid": self.kid,
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "n": b64url(numbers.n),
            "e": b64url(numbers.e),
            "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()],
        }


class SigningKeyStore:
    """Signing keys under ``<directory>``: ``<kid>.key.pem``, ``<kid>.cert.pem`` and ``keys.json``."""

    def __init__(self, directory: Path, *, token_lifetime: int) -> None:
        self._dir = directory
        self._token_lifetime = token_lifetime
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
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetrain local attestation token signing")])
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
            .sign(private_key, hashes.SHA256())
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
            keys.append(SigningKey(kid, private_key, certificate, entry["created_at"], entry["retired_at"]))  # type: ignore[arg-type]
        return keys


class TokenSigner:
    """Signs the service's tokens (attestation results, policy results) as ``issuer``, with the current key."""

    def __init__(self, keys: SigningKeyStore, issuer: str, lifetime_s: int) -> None:
        self._keys = keys
        self.issuer = issuer
        self._lifetime = lifetime_s

    def sign(self, claims: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The RS256 token carrying ``claims`` plus ``iss``, ``iat``, ``nbf``, ``exp`` and a fresh ``jti``,
        and those complete claims; the header names the key (``kid``) and where it is published (``jku``)."""
        now = int(time.time())
        complete = {"iss": self.issuer, "iat": now, "nbf": now, "exp": now + self._lifetime,
                    "jti": secrets.token_hex(16), **claims}  # fmt: skip
        signer = self._keys.current
        token = jwt.encode(complete, signer.private_key, algorithm="RS256",
                           headers={"kid": signer.kid, "jku": f"{self.issuer}/certs", "typ": "JWT"})  # fmt: skip
        return token, complete
