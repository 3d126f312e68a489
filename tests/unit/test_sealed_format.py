"""The sealed-data format: round trips around segment boundaries and every way a file can be wrong."""

from __future__ import annotations

import hashlib
import io
import struct

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.sealed import KekPrivateKey, KekPublicKey, SealedReader, inspect, seal, unseal_file
from securetrain.core.sealed import errors
from securetrain.core.sealed.header import KeyWrap, SealedContent, SealedHeader
from securetrain.core.sealed.stream import STREAM_HEADER_SIZE, TAG_SIZE, SegmentLayout, encrypt_stream

SEGMENT = 4096
FIRST = SEGMENT - STREAM_HEADER_SIZE - TAG_SIZE
OTHER = SEGMENT - TAG_SIZE
CONTEXT = {"dataset_id": "breast-cancer", "classification": "phi"}


def payload(n: int) -> bytes:
    return hashlib.shake_256(n.to_bytes(8, "big")).digest(n) if n else b""


def sealed(data: bytes, kek: KekPublicKey, context=CONTEXT, segment_size: int = SEGMENT) -> bytes:
    out = io.BytesIO()
    header = seal(io.BytesIO(data), out, kek, context, segment_size=segment_size)
    assert len(out.getvalue()) == header.sealed_length
    return out.getvalue()


def opened(blob: bytes, kek: KekPrivateKey, **kwargs) -> bytes:
    """The plaintext of ``blob``, read both ways a reader has, which must agree: the same plaintext, or the same
    error raised."""
    by_segment, whole = _read(blob, kek, kwargs, _by_segment), _read(blob, kek, kwargs, _whole)
    if isinstance(by_segment, errors.SealedFileError):
        assert (type(whole), str(whole)) == (type(by_segment), str(by_segment))
        raise by_segment
    assert whole == by_segment
    return by_segment


def _read(blob: bytes, kek: KekPrivateKey, kwargs: dict, way) -> bytes | errors.SealedFileError:
    try:
        return way(SealedReader(io.BytesIO(blob), kek, **kwargs))
    except errors.SealedFileError as exc:
        return exc


def _by_segment(reader: SealedReader) -> bytes:
    out = io.BytesIO()
    for segment in reader.segments():
        out.write(segment)
    return out.getvalue()


def _whole(reader: SealedReader) -> bytes:
    buffer = bytearray(reader.header.content.plaintext_length)
    try:
        reader.decrypt_into(buffer)
    except errors.SealedFileError:
        # No byte of a failed read stays behind, authenticated or not.
        assert buffer.count(0) == len(buffer)
        raise
    return bytes(buffer)


def stream_start(blob: bytes) -> int:
    return inspect(io.BytesIO(blob)).size


def segment_span(blob: bytes, index: int) -> slice:
    header = inspect(io.BytesIO(blob))
    layout = header.content.layout
    start = header.size + layout.ciphertext_offset(index)
    return slice(start, start + layout.ciphertext_size(index))


# Sizes that sit on, just before and just after the first and second segment boundaries.
BOUNDARIES = [0, 1, FIRST - 1, FIRST, FIRST + 1, FIRST + OTHER - 1, FIRST + OTHER, FIRST + OTHER + 1, FIRST + 2 * OTHER]


@pytest.mark.parametrize("size", BOUNDARIES)
def test_round_trip_at_segment_boundaries(size, kek_public, kek_private):
    data = payload(size)
    blob = sealed(data, kek_public)
    assert opened(blob, kek_private, verify_digest=True) == data
    header = inspect(io.BytesIO(blob))
    assert header.content.plaintext_length == size
    assert header.content.plaintext_sha256 == hashlib.sha256(data).hexdigest()


@settings(max_examples=60, deadline=None)
@given(
    size=st.one_of(
        st.integers(0, 5 * SEGMENT),
        st.sampled_from(BOUNDARIES).flatmap(lambda b: st.integers(max(0, b - 2), b + 2)),
    ),
    segment_size=st.sampled_from([4096, 4097, 8192]),
)
def test_round_trip_any_size(size, segment_size, kek_public, kek_private):
    data = payload(size)
    assert opened(sealed(data, kek_public, segment_size=segment_size), kek_private) == data


def test_reader_file_interface_reads_in_any_chunking(kek_public, kek_private):
    data = payload(3 * SEGMENT + 17)
    reader = SealedReader(io.BytesIO(sealed(data, kek_public)), kek_private)
    parts = []
    while chunk := reader.read(1000):
        parts.append(chunk)
    assert b"".join(parts) == data


def test_a_reader_reads_its_plaintext_once_whichever_way(kek_public, kek_private):
    blob = sealed(payload(SEGMENT + 1), kek_public)
    reader = SealedReader(io.BytesIO(blob), kek_private)
    assert reader.read_plaintext() == payload(SEGMENT + 1)
    with pytest.raises(errors.SealInputError, match="read once"):
        reader.segments()
    reader = SealedReader(io.BytesIO(blob), kek_private)
    next(reader.segments())
    with pytest.raises(errors.SealInputError, match="read once"):
        reader.read_plaintext()


def test_decrypting_into_a_buffer_of_another_size_is_refused(kek_public, kek_private):
    reader = SealedReader(io.BytesIO(sealed(payload(100), kek_public)), kek_private)
    with pytest.raises(errors.SealInputError, match="the plaintext is 100 bytes; the buffer is 99"):
        reader.decrypt_into(bytearray(99))


def test_header_records_what_was_sealed(kek_public):
    header = inspect(io.BytesIO(sealed(payload(10_000), kek_public)))
    doc = header.to_json()
    assert doc["context"] == CONTEXT
    assert doc["key"]["kek_id"] == kek_public.kek_id
    assert doc["key"]["alg"] == "RSA-OAEP-256"
    assert doc["key"]["kek_thumbprint"] == kek_public.thumbprint
    assert doc["segment_count"] == 3


def test_every_file_gets_a_fresh_data_key(kek_public):
    a, b = sealed(b"same", kek_public), sealed(b"same", kek_public)
    assert inspect(io.BytesIO(a)).key.wrapped_dek != inspect(io.BytesIO(b)).key.wrapped_dek
    assert a[stream_start(a):] != b[stream_start(b):]


# --- keys and context -------------------------------------------------------------------------------


def test_wrong_private_key_is_named(kek_public, other_rsa_key):
    with pytest.raises(errors.WrongKey, match="sealed for KEK .*another one"):
        opened(sealed(b"x", kek_public), KekPrivateKey(other_rsa_key))


def test_wrapped_key_from_another_kek_is_refused(kek_public, kek_private, other_rsa_key):
    blob = sealed(b"x", kek_public)
    header = inspect(io.BytesIO(blob))
    foreign = KekPublicKey("https://v/keys/other/1", other_rsa_key.public_key()).wrap(b"k" * 32)
    forged = header.with_key(KeyWrap(header.key.kek_id, header.key.kek_thumbprint, "RSA-OAEP-256", foreign))
    with pytest.raises(errors.WrongKey, match="altered"):
        opened(forged.to_bytes() + blob[header.size:], kek_private)


def test_data_key_rewrapped_to_the_same_kek_but_different_fails_the_header_tag(kek_public, kek_private):
    blob = sealed(b"secret", kek_public)
    header = inspect(io.BytesIO(blob))
    swapped = header.with_key(
        KeyWrap(header.key.kek_id, header.key.kek_thumbprint, "RSA-OAEP-256", kek_public.wrap(b"\0" * 32))
    )
    with pytest.raises(errors.HeaderTampered):
        opened(swapped.to_bytes() + blob[header.size:], kek_private)


def test_wrong_context_is_named(kek_public, kek_private):
    with pytest.raises(errors.WrongContext, match="'dataset_id' is 'breast-cancer'.*expected 'digits'"):
        opened(sealed(b"x", kek_public), kek_private, expected_context={"dataset_id": "digits"})


def test_expected_context_matches(kek_public, kek_private):
    assert opened(sealed(b"x", kek_public), kek_private, expected_context={"dataset_id": "breast-cancer"}) == b"x"


def test_changed_header_context_is_caught_before_any_segment(kek_public, kek_private):
    blob = sealed(payload(100), kek_public)
    tampered = blob.replace(b'"phi"', b'"pub"', 1)
    assert tampered != blob
    with pytest.raises(errors.HeaderTampered):
        opened(tampered, kek_private)


# --- the segment stream -----------------------------------------------------------------------------


@pytest.mark.parametrize("segment", [0, 1, 3])
def test_bit_flip_names_the_segment(segment, kek_public, kek_private):
    blob = bytearray(sealed(payload(FIRST + 3 * OTHER), kek_public))
    span = segment_span(bytes(blob), segment)
    blob[span.start + 5] ^= 0x01
    with pytest.raises(errors.SegmentTampered, match=f"segment {segment} failed") as caught:
        opened(bytes(blob), kek_private)
    assert caught.value.segment == segment


def test_flip_in_stream_header_fails_first_segment(kek_public, kek_private):
    blob = bytearray(sealed(payload(100), kek_public))
    blob[stream_start(bytes(blob)) + 3] ^= 0x80  # inside the salt
    with pytest.raises(errors.SegmentTampered):
        opened(bytes(blob), kek_private)


def test_swapped_segments_are_named_as_reordered(kek_public, kek_private):
    blob = sealed(payload(FIRST + 3 * OTHER), kek_public)
    one, two = segment_span(blob, 1), segment_span(blob, 2)
    swapped = blob[: one.start] + blob[two] + blob[one] + blob[two.stop :]
    with pytest.raises(errors.SegmentOutOfOrder, match="position 1 is segment 2") as caught:
        opened(swapped, kek_private)
    assert (caught.value.position, caught.value.segment) == (1, 2)


def test_duplicated_segment_is_named(kek_public, kek_private):
    blob = sealed(payload(FIRST + 3 * OTHER), kek_public)
    one, two = segment_span(blob, 1), segment_span(blob, 2)
    duplicated = blob[: two.start] + blob[one] + blob[two.stop :]
    with pytest.raises(errors.SegmentOutOfOrder, match="position 2 is segment 1"):
        opened(duplicated, kek_private)


@pytest.mark.parametrize("cut", [1, 100, OTHER, OTHER + 7])
def test_truncation_is_named(cut, kek_public, kek_private):
    blob = sealed(payload(FIRST + 3 * OTHER + 50), kek_public)
    with pytest.raises(errors.Truncated):
        opened(blob[:-cut], kek_private)


def test_cut_at_a_segment_boundary_with_the_header_length_kept_is_truncation(kek_public, kek_private):
    # Dropping the final segment leaves a stream that ends on a boundary: the layout says more must come.
    blob = sealed(payload(FIRST + 2 * OTHER), kek_public)
    with pytest.raises(errors.Truncated, match="ends inside segment 2"):
        opened(blob[: segment_span(blob, 2).start], kek_private)


@pytest.mark.parametrize("extra", [b"\0", b"appended data" * 100])
def test_appended_bytes_are_named(extra, kek_public, kek_private):
    with pytest.raises(errors.TrailingData):
        opened(sealed(payload(FIRST + 5), kek_public) + extra, kek_private)


def test_digest_mismatch_is_caught_when_verifying(kek_public, kek_private):
    # Only a holder of the data key could write such a file; build one to show the check can fail.
    data = payload(5000)
    dek = b"d" * 32
    content = SealedContent(SEGMENT, {}, len(data), hashlib.sha256(b"other").hexdigest())
    header = SealedHeader(
        content, content.tag(dek), KeyWrap(kek_public.kek_id, kek_public.thumbprint, "RSA-OAEP-256", kek_public.wrap(dek))
    )
    out = io.BytesIO(header.to_bytes())
    out.seek(0, io.SEEK_END)
    encrypt_stream(
        io.BytesIO(data), out, dek=dek, associated_data=content.stream_associated_data(), layout=content.layout,
        digest=hashlib.sha256(),
    )  # fmt: skip
    assert opened(out.getvalue(), kek_private) == data
    with pytest.raises(errors.PlaintextDigestMismatch):
        opened(out.getvalue(), kek_private, verify_digest=True)


# --- the header -------------------------------------------------------------------------------------


def test_unknown_version(kek_public, kek_private):
    blob = bytearray(sealed(b"x", kek_public))
    blob[4] = 3
    with pytest.raises(errors.UnsupportedVersion, match="version 3 is not supported .*reads versions 1, 2"):
        inspect(io.BytesIO(bytes(blob)))


def content_section(blob: bytes) -> tuple[int, bytes]:
    (length,) = struct.unpack(">I", blob[5:9])
    return length, blob[9 : 9 + length]


def with_content(blob: bytes, content: dict) -> bytes:
    length, _ = content_section(blob)
    body = rfc8785.dumps(content)
    return blob[:5] + struct.pack(">I", len(body)) + body + blob[9 + length :]


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:5] + struct.pack(">I", 1 << 30) + b[9:], "section length"),
        (lambda b: b[:5] + struct.pack(">I", 0) + b[9:], "section length"),
        (lambda b: b[:7], "ends inside the header"),
        (lambda b: b[:9] + b"\xff" + b[10:], "not JSON"),
    ],
)
def test_malformed_header(mangle, message, kek_public):
    with pytest.raises(errors.MalformedHeader, match=message):
        inspect(io.BytesIO(mangle(sealed(b"x", kek_public))))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(aead="CHACHA"), "AEAD"),
        (lambda c: c.update(segment_size=10), "segment size"),
        (lambda c: c.update(plaintext_length=-1), "negative"),
        (lambda c: c.update(plaintext_sha256="zz"), "hex"),
        (lambda c: c.update(extra=1), "unexpected fields"),
        (lambda c: c.pop("context"), "lacks"),
        (lambda c: c.update(context={"bad key!": "v"}), "context key"),
        (lambda c: c.update(segment_size=True), "segment_size"),
    ],
)
def test_invalid_content_fields(edit, message, kek_public):
    blob = sealed(b"x", kek_public)
    import json

    content = json.loads(content_section(blob)[1])
    edit(content)
    with pytest.raises(errors.MalformedHeader, match=message):
        inspect(io.BytesIO(with_content(blob, content)))


def test_non_canonical_json_is_refused(kek_public):
    blob = sealed(b"x", kek_public)
    length, body = content_section(blob)
    spaced = body.replace(b":", b": ", 1)
    mangled = blob[:5] + struct.pack(">I", len(spaced)) + spaced + blob[9 + length :]
    with pytest.raises(errors.MalformedHeader, match="canonical"):
        inspect(io.BytesIO(mangled))


def test_unseal_file_leaves_nothing_on_failure(tmp_path, kek_public, kek_private):
    blob = bytearray(sealed(payload(3 * SEGMENT), kek_public))
    blob[-3] ^= 1
    src = tmp_path / "data.sealed"
    src.write_bytes(bytes(blob))
    with pytest.raises(errors.SegmentTampered):
        unseal_file(src, tmp_path / "data.bin", kek_private)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.sealed"]


def test_unseal_file_output_is_owner_only(tmp_path, kek_public, kek_private):
    src = tmp_path / "data.sealed"
    src.write_bytes(sealed(b"plaintext", kek_public))
    unseal_file(src, tmp_path / "data.bin", kek_private)
    assert (tmp_path / "data.bin").read_bytes() == b"plaintext"
    assert (tmp_path / "data.bin").stat().st_mode & 0o077 == 0


def test_seal_refuses_unseekable_input(kek_public):
    class Pipe(io.RawIOBase):
        def readable(self):
            return True

    with pytest.raises(errors.SealInputError, match="seekable"):
        seal(Pipe(), io.BytesIO(), kek_public)


def test_layout_refuses_bad_segment_sizes():
    with pytest.raises(errors.SealInputError):
        SegmentLayout(100, 0)
    with pytest.raises(errors.SealInputError):
        SegmentLayout(128 << 20, 0)


def test_small_rsa_kek_is_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(errors.SealInputError, match="at least 2048"):
        KekPublicKey("https://v/keys/k/1", small.public_key())
