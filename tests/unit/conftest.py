"""Keys shared by the unit tests: made once per session (RSA generation is slow)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.sealed import KekPrivateKey, KekPublicKey

KEK_ID = "https://vault.securetrain.test/keys/kek/0123456789abcdef"


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def kek_public(rsa_key: rsa.RSAPrivateKey) -> KekPublicKey:
    return KekPublicKey(KEK_ID, rsa_key.public_key())


@pytest.fixture(scope="session")
def kek_private(rsa_key: rsa.RSAPrivateKey) -> KekPrivateKey:
    return KekPrivateKey(rsa_key)


@pytest.fixture(scope="session")
def key_pems(tmp_path_factory: pytest.TempPathFactory, rsa_key: rsa.RSAPrivateKey) -> tuple:
    """The KEK as PEM files: (public, private)."""
    folder = tmp_path_factory.mktemp("kek")
    public = folder / "kek.pub.pem"
    private = folder / "kek.pem"
    public.write_bytes(
        rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return public, private
