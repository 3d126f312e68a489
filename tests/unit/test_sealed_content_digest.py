"""content_digest: the same before and after a rewrap to another KEK, different for any other change."""

from __future__ import annotations

import io

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.sealed import KekPrivateKey, KekPublicKey, content_digest, inspect, seal
from securetrain.core.sealed.errors import TrailingData, Truncated
from securetrain.core.sealed.header import KeyWrap
from securetrain.core.sealed.kek import WRAP_ALGORITHM


def _kek(kek_id: str) -> tuple[KekPrivateKey, KekPublicKey]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KekPrivateKey(private), KekPublicKey(kek_id, private.public_key())


def _sealed(kek: tuple[KekPrivateKey, KekPublicKey]) -> bytes:
    out = io.BytesIO()
    seal(io.BytesIO(b"model weights " * 5000), out, kek[1], {"run_id": "r", "kind": "model"})
    return out.getvalue()


def _rewrapped(sealed: bytes, old: tuple[KekPrivateKey, KekPublicKey], new: tuple[KekPrivateKey, KekPublicKey]) -> bytes:
    """What a KEK rotation writes: the same file with the data key wrapped for ``new``."""
    header = inspect(io.BytesIO(sealed))
    dek = old[0].unwrap(header.key.wrapped_dek, kek_id=header.key.kek_id, kek_thumbprint=header.key.kek_thumbprint)
    key = KeyWrap(new[1].kek_id, new[1].thumbprint, WRAP_ALGORITHM, new[1].wrap(dek))
    return header.with_key(key).to_bytes() + sealed[header.size :]


def test_a_rewrap_keeps_the_content_digest_and_other_changes_do_not() -> None:
    old, new = _kek("https://vault/keys/kek/1"), _kek("https://vault/keys/kek/2")
    sealed = _sealed(old)
    rewrapped = _rewrapped(sealed, old, new)
    assert rewrapped != sealed
    assert content_digest(rewrapped) == content_digest(sealed)
    flipped = bytearray(sealed)
    flipped[-20] ^= 1
    assert content_digest(bytes(flipped)) != content_digest(sealed)
    with pytest.raises(Truncated):
        content_digest(sealed[:-1])
    with pytest.raises(TrailingData):
        content_digest(sealed + b"\0")
