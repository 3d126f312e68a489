"""Format versions and the two ways of sealing: one pass into a seekable output (digest computed while the
stream is encrypted, header rewritten in place) and two passes into any other output; version 1 files stay
readable, and neither version can be passed off as the other."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from securetrain.core.sealed import KekPrivateKey, content_digest, inspect, seal, unseal
from securetrain.core.sealed import errors
from securetrain.core.sealed.header import FORMAT_VERSION

SEGMENT = 4096
CONTEXT = {"dataset_id": "breast-cancer", "classification": "phi"}
# Sealed by the version 1 writer, with a key made for this test alone; the plaintext is derived below.
V1 = Path(__file__).parent / "data" / "sealed-v1"
V1_PLAINTEXT = hashlib.shake_256(b"securetrain sealed v1 fixture").digest(4040 + 4080 + 100)


def payload(n: int) -> bytes:
    return hashlib.shake_256(n.to_bytes(8, "big")).digest(n)


def opened(blob: bytes, kek: KekPrivateKey, **kwargs) -> bytes:
    out = io.BytesIO()
    unseal(io.BytesIO(blob), out, kek, **kwargs)
    return out.getvalue()


def with_content_field(blob: bytes, field: str, old: str, new: str) -> bytes:
    needle = f'"{field}":"{old}"'.encode()
    assert blob.count(needle) == 1
    return blob.replace(needle, f'"{field}":"{new}"'.encode())


class Unseekable(io.RawIOBase):
    """An output that cannot seek (a pipe, an upload stream): what it was written, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.written += data
        return len(data)


@pytest.fixture(scope="module")
def v1_kek() -> KekPrivateKey:
    return KekPrivateKey.from_pem((V1 / "kek-test-only.pem").read_bytes())


@pytest.fixture(scope="module")
def v1_blob() -> bytes:
    return (V1 / "shard.sealed").read_bytes()


def test_seal_writes_the_current_version(kek_public, kek_private):
    data = payload(3 * SEGMENT)
    out = io.BytesIO()
    header = seal(io.BytesIO(data), out, kek_public, CONTEXT, segment_size=SEGMENT)
    assert FORMAT_VERSION == 2
    assert out.getvalue()[4] == 2 and inspect(io.BytesIO(out.getvalue())).to_json()["version"] == 2
    assert header == inspect(io.BytesIO(out.getvalue()))
    assert header.content.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert opened(out.getvalue(), kek_private, verify_digest=True) == data


@pytest.mark.parametrize("size", [0, 1, 4040, 4041, 4040 + 4080 * 2, 10 * SEGMENT + 7])
def test_one_pass_and_two_pass_seals_agree(size, kek_public, kek_private):
    data = payload(size)
    seekable, unseekable = io.BytesIO(), Unseekable()
    one = seal(io.BytesIO(data), seekable, kek_public, CONTEXT, segment_size=SEGMENT)
    two = seal(io.BytesIO(data), unseekable, kek_public, CONTEXT, segment_size=SEGMENT)
    assert one.content == two.content
    assert one.content.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    for blob in (seekable.getvalue(), bytes(unseekable.written)):
        assert len(blob) == one.sealed_length
        assert opened(blob, kek_private, verify_digest=True) == data


def test_one_pass_seal_rewrites_the_header_where_it_began(kek_public, kek_private):
    out = io.BytesIO(b"bytes before the sealed file")
    out.seek(0, io.SEEK_END)
    header = seal(io.BytesIO(payload(9000)), out, kek_public, segment_size=SEGMENT)
    assert out.tell() == len(out.getvalue())
    assert out.getvalue().startswith(b"bytes before the sealed file")
    assert opened(out.getvalue()[28:], kek_private, verify_digest=True) == payload(9000)
    assert header.sealed_length == len(out.getvalue()) - 28


def test_a_one_pass_seal_cut_short_never_opens(kek_public, kek_private):
    class FailsAfterOneSegment(io.BytesIO):
        reads = 0

        def readinto(self, buffer) -> int:  # type: ignore[override]
            self.reads += 1
            if self.reads > 1:
                raise OSError("the disk failed")
            return super().readinto(buffer)

    out = io.BytesIO()
    with pytest.raises(OSError, match="disk failed"):
        seal(FailsAfterOneSegment(payload(3 * SEGMENT)), out, kek_public, segment_size=SEGMENT)
    # What was written so far carries the provisional header: its zero tag fails before any segment is read.
    with pytest.raises(errors.HeaderTampered):
        opened(out.getvalue(), kek_private)


def test_two_pass_seal_refuses_an_input_that_changed_between_its_reads(kek_public):
    class ChangesAfterBeingRead(io.BytesIO):
        reads = 0

        def readinto(self, buffer) -> int:  # type: ignore[override]
            self.reads += 1
            return super().readinto(buffer)

        def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
            if whence == io.SEEK_SET and offset == 0 and self.reads:
                self.getbuffer()[0] ^= 1  # the same length, another first byte
            return super().seek(offset, whence)

    with pytest.raises(errors.SealInputError, match="changed while it was being sealed"):
        seal(ChangesAfterBeingRead(payload(9000)), Unseekable(), kek_public, segment_size=SEGMENT)


def test_a_changed_digest_fails_the_header_tag(kek_public, kek_private):
    data = payload(9000)
    out = io.BytesIO()
    header = seal(io.BytesIO(data), out, kek_public, segment_size=SEGMENT)
    other = hashlib.sha256(b"other content").hexdigest()
    tampered = with_content_field(out.getvalue(), "plaintext_sha256", header.content.plaintext_sha256, other)
    with pytest.raises(errors.HeaderTampered):
        opened(tampered, kek_private)


def test_version_1_files_stay_readable(v1_blob, v1_kek):
    header = inspect(io.BytesIO(v1_blob))
    assert header.to_json()["version"] == 1 and header.content.version == 1
    assert header.content.context == CONTEXT
    assert header.content.plaintext_sha256 == hashlib.sha256(V1_PLAINTEXT).hexdigest()
    assert opened(v1_blob, v1_kek, verify_digest=True, expected_context=CONTEXT) == V1_PLAINTEXT
    # What names a sealed model or shard is computed alike: the header's authenticated part as written, tag, stream.
    expected = hashlib.sha256(header.content.authenticated_bytes() + header.tag + v1_blob[header.size :]).hexdigest()
    assert v1_blob.startswith(header.content.authenticated_bytes() + header.tag)
    assert content_digest(v1_blob) == expected


def test_version_1_tampering_is_still_caught(v1_blob, v1_kek):
    header = inspect(io.BytesIO(v1_blob))
    other = hashlib.sha256(b"other content").hexdigest()
    with pytest.raises(errors.HeaderTampered):
        opened(with_content_field(v1_blob, "plaintext_sha256", header.content.plaintext_sha256, other), v1_kek)
    flipped = bytearray(v1_blob)
    flipped[-1] ^= 1
    with pytest.raises(errors.SegmentTampered):
        opened(bytes(flipped), v1_kek)


@pytest.mark.parametrize("relabel", [(2, 1), (1, 2)])
def test_a_file_relabelled_as_the_other_version_fails_the_header_tag(relabel, v1_blob, v1_kek, kek_public, kek_private):
    source, target = relabel
    if source == 1:
        blob, kek = bytearray(v1_blob), v1_kek
    else:
        out = io.BytesIO()
        seal(io.BytesIO(payload(9000)), out, kek_public, segment_size=SEGMENT)
        blob, kek = bytearray(out.getvalue()), kek_private
    assert blob[4] == source
    blob[4] = target
    assert inspect(io.BytesIO(bytes(blob))).content.version == target
    with pytest.raises(errors.HeaderTampered):
        opened(bytes(blob), kek)


def test_an_output_opened_to_append_is_sealed_in_two_reads(tmp_path, kek_public, kek_private):
    # Appending, every write lands at the end: a header rewritten in place would be appended instead.
    target = tmp_path / "shards.sealed"
    target.write_bytes(b"earlier bytes")
    data = payload(9000)
    with target.open("ab") as out:
        header = seal(io.BytesIO(data), out, kek_public, segment_size=SEGMENT)
    blob = target.read_bytes()
    assert blob.startswith(b"earlier bytes") and len(blob) == len(b"earlier bytes") + header.sealed_length
    assert opened(blob[len(b"earlier bytes") :], kek_private, verify_digest=True) == data
