"""Opening a sealed file again with the header opened before: the data key is not unwrapped again for the same
file, and every check still refuses another one (a swapped file, another wrapped key, a changed segment)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pytest

from securetrain.core.sealed import KekPrivateKey, KekPublicKey, OpenedHeader, SealedReader, inspect, seal
from securetrain.core.sealed import errors
from securetrain.core.sealed.header import KeyWrap

CONTEXT = {"dataset_id": "breast-cancer"}
SEGMENT = 4096


@dataclass(frozen=True)
class CountingKek(KekPrivateKey):
    """The KEK, counting its private-key operations."""

    unwraps: list[bytes] = field(default_factory=list)

    def unwrap(self, wrapped_dek: bytes, *, kek_id: str, kek_thumbprint: str) -> bytes:
        self.unwraps.append(wrapped_dek)
        return super().unwrap(wrapped_dek, kek_id=kek_id, kek_thumbprint=kek_thumbprint)


def sealed(data: bytes, kek: KekPublicKey, context=CONTEXT) -> bytes:
    out = io.BytesIO()
    seal(io.BytesIO(data), out, kek, context, segment_size=SEGMENT)
    return out.getvalue()


def read(blob: bytes, key: KekPrivateKey | OpenedHeader, context=CONTEXT) -> bytes:
    return SealedReader(io.BytesIO(blob), key, expected_context=context).read()


@pytest.fixture
def kek(rsa_key) -> CountingKek:
    return CountingKek(rsa_key)


def first_open(blob: bytes, kek: CountingKek) -> OpenedHeader:
    opened = SealedReader(io.BytesIO(blob), kek, expected_context=CONTEXT).opened
    assert len(kek.unwraps) == 1
    return opened


def test_the_same_file_opens_again_without_unwrapping_its_data_key(kek_public, kek):
    data = bytes(range(256)) * 64
    blob = sealed(data, kek_public)
    opened = first_open(blob, kek)
    assert read(blob, opened) == data
    assert read(blob, opened) == data
    assert len(kek.unwraps) == 1
    assert opened.header == inspect(io.BytesIO(blob))
    assert "dek" not in repr(opened) and opened._dek.hex() not in repr(opened)


def test_another_file_for_the_same_key_and_context_is_opened_with_the_kek_and_its_own_data_key(kek_public, kek):
    opened = first_open(sealed(b"first", kek_public), kek)
    other = sealed(b"second", kek_public)
    reader = SealedReader(io.BytesIO(other), opened, expected_context=CONTEXT)
    assert reader.read() == b"second"
    assert len(kek.unwraps) == 2 and reader.header != opened.header


def test_the_first_files_content_with_another_wrapped_key_fails_the_header_tag(kek_public, kek):
    blob = sealed(b"secret", kek_public)
    opened = first_open(blob, kek)
    header = opened.header
    swapped = header.with_key(
        KeyWrap(header.key.kek_id, header.key.kek_thumbprint, "RSA-OAEP-256", kek_public.wrap(b"\0" * 32))
    )
    with pytest.raises(errors.HeaderTampered):
        read(swapped.to_bytes() + blob[header.size :], opened)
    assert kek.unwraps[-1] == swapped.key.wrapped_dek  # not the data key opened before


def test_the_first_files_wrapped_key_on_another_files_content_fails_the_header_tag(kek_public, kek):
    blob = sealed(b"secret", kek_public)
    opened = first_open(blob, kek)
    other = sealed(b"other", kek_public)
    other_header = inspect(io.BytesIO(other))
    grafted = other_header.with_key(opened.header.key).to_bytes() + other[other_header.size :]
    with pytest.raises(errors.HeaderTampered):
        read(grafted, opened)


def test_a_file_for_another_kek_is_refused_as_before(kek_public, kek, other_rsa_key):
    opened = first_open(sealed(b"x", kek_public), kek)
    foreign = sealed(b"x", KekPublicKey("https://v/keys/other/1", other_rsa_key.public_key()))
    with pytest.raises(errors.WrongKey, match="another one"):
        read(foreign, opened)


def test_the_context_is_checked_again(kek_public, kek):
    blob = sealed(b"x", kek_public)
    opened = first_open(blob, kek)
    with pytest.raises(errors.WrongContext, match="expected 'digits'"):
        read(blob, opened, context={"dataset_id": "digits"})


def test_a_changed_segment_and_a_cut_file_are_refused_with_the_header_unchanged(kek_public, kek):
    blob = sealed(bytes(3 * SEGMENT), kek_public)
    opened = first_open(blob, kek)
    flipped = bytearray(blob)
    flipped[-20] ^= 0x01
    with pytest.raises(errors.SegmentTampered):
        read(bytes(flipped), opened)
    with pytest.raises(errors.Truncated):
        read(blob[:-SEGMENT], opened)
    with pytest.raises(errors.TrailingData):
        read(blob + b"\0", opened)
    assert len(kek.unwraps) == 1
