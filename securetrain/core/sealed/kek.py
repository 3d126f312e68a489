"""The key-encryption key (KEK): wrapping a file's data key to its public half, and unwrapping it again.

Sealing needs only the public half (:class:`KekPublicKey`), so a data owner seals offline and Airflow never
holds a private key; the wrap is Key Vault's ``RSA-OAEP-256`` (docs/formats.md, "Keys").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from securetrain.core.sealed.errors import SealInputError, WrongKey

WRAP_ALGORITHM = "RSA-OAEP-256"
MIN_RSA_BITS = 2048
_OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _thumbprint(public_key: rsa.RSAPublicKey) -> str:
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _require_rsa(key: object, what: str) -> None:
    if not isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        raise SealInputError(f"{what} is not an RSA key ({type(key).__name__}); a KEK is RSA")
    if key.key_size < MIN_RSA_BITS:
        raise SealInputError(f"{what} has {key.key_size} bits; a KEK needs at least {MIN_RSA_BITS}")


@dataclass(frozen=True)
class KekPublicKey:
    """The public half of a KEK and the id under which Key Vault knows it (a versioned key URL)."""

    kek_id: str
    public_key: rsa.RSAPublicKey

    def __post_init__(self) -> None:
        if not self.kek_id:
            raise SealInputError("a KEK needs its key id (the Key Vault key URL with its version)")
        _require_rsa(self.public_key, f"KEK {self.kek_id}")

    @classmethod
    def from_pem(cls, pem: bytes, kek_id: str) -> KekPublicKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise SealInputError(f"the KEK public key is not a PEM public key: {exc}") from None
        return cls(kek_id, key)  # type: ignore[arg-type]

    @classmethod
    def from_modulus(cls, n: bytes, e: bytes, kek_id: str) -> KekPublicKey:
        """From a JSON Web Key's ``n`` and ``e`` (big-endian bytes), as ``KeyVaultKey.key`` holds them."""
        numbers = rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big"))
        return cls(kek_id, numbers.public_key())

    @property
    def thumbprint(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo, hex: names the key independent of where it lives."""
        return _thumbprint(self.public_key)

    def wrap(self, dek: bytes) -> bytes:
        return self.public_key.encrypt(dek, _OAEP_SHA256)


@dataclass(frozen=True)
class KekPrivateKey:
    """The private half of a KEK: in production only the TEE holds it, in memory, after release."""

    private_key: rsa.RSAPrivateKey

    def __post_init__(self) -> None:
        _require_rsa(self.private_key, "the KEK private key")

    @classmethod
    def from_pem(cls, pem: bytes, password: bytes | None = None) -> KekPrivateKey:
        try:
            key = serialization.load_pem_private_key(pem, password=password)
        except (ValueError, TypeError) as exc:
            raise SealInputError(f"the KEK private key does not load as PEM: {exc}") from None
        return cls(key)  # type: ignore[arg-type]

    @property
    def thumbprint(self) -> str:
        return _thumbprint(self.private_key.public_key())

    def unwrap(self, wrapped_dek: bytes, *, kek_id: str, kek_thumbprint: str) -> bytes:
        """Unwrap a data key sealed for ``kek_id``; :class:`WrongKey` if this is not that key."""
        if kek_thumbprint != self.thumbprint:
            raise WrongKey(
                f"the file was sealed for KEK {kek_id} (thumbprint {kek_thumbprint[:16]}…); "
                f"the private key given is another one (thumbprint {self.thumbprint[:16]}…)"
            )
        try:
            return self.private_key.decrypt(wrapped_dek, _OAEP_SHA256)
        except ValueError:
            raise WrongKey(
                f"the data key wrapped for KEK {kek_id} does not unwrap with its private key: "
                "the wrapped key in the header was altered"
            ) from None
