"""The segment stream is Tink's AES-GCM-HKDF streaming AEAD: the ``tink`` package reads ours, we read Tink's."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import tink
from tink import cleartext_keyset_handle, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

from securetrain.core.sealed import inspect, seal
from securetrain.core.sealed.stream import STREAM_HEADER_SIZE, TAG_SIZE, SegmentLayout, StreamDecryptor, encrypt_stream

streaming_aead.register()

TYPE_URL = "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey"


def tink_primitive(dek: bytes, segment_size: int) -> streaming_aead.StreamingAead:
    """A Tink keyset whose only key is ``dek`` with the parameters of AES256_GCM_HKDF_1MB (segment size aside)."""
    key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(
        version=0,
        key_value=dek,
        params=aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
            ciphertext_segment_size=segment_size, derived_key_size=32, hkdf_hash_type=common_pb2.SHA256
        ),
    )
    keyset = tink_pb2.Keyset(
        primary_key_id=1,
        key=[
            tink_pb2.Keyset.Key(
                key_data=tink_pb2.KeyData(
                    type_url=TYPE_URL, value=key.SerializeToString(), key_material_type=tink_pb2.KeyData.SYMMETRIC
                ),
                status=tink_pb2.ENABLED,
                key_id=1,
                output_prefix_type=tink_pb2.RAW,
            )
        ],
    )
    return cleartext_keyset_handle.from_keyset(keyset).primitive(streaming_aead.StreamingAead)


def test_the_1mb_template_has_the_parameters_we_use():
    template = streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB
    params = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKeyFormat.FromString(template.value).params
    assert (params.ciphertext_segment_size, params.derived_key_size, params.hkdf_hash_type) == (
        1 << 20, 32, common_pb2.SHA256,
    )


class Sink(io.BytesIO):
    """Tink closes the stream it writes to; keep what was written."""

    def close(self) -> None:
        self.written = self.getvalue()
        super().close()


def boundary_sizes(segment: int) -> list[int]:
    first, other = segment - STREAM_HEADER_SIZE - TAG_SIZE, segment - TAG_SIZE
    return [0, 1, first - 1, first, first + 1, first + other, first + other + 1, first + 2 * other + 3]


@pytest.mark.parametrize("segment_size", [4096, 1 << 20])
def test_tink_decrypts_our_stream(segment_size):
    dek, aad = os.urandom(32), b"securetrain associated data"
    tink_aead = tink_primitive(dek, segment_size)
    for size in boundary_sizes(segment_size):
        data = os.urandom(size)
        out, digest = io.BytesIO(), hashlib.sha256()
        layout = SegmentLayout(segment_size, size)
        encrypt_stream(io.BytesIO(data), out, dek=dek, associated_data=aad, layout=layout, digest=digest)
        with tink_aead.new_decrypting_stream(io.BytesIO(out.getvalue()), aad) as dec:
            assert dec.read() == data, size
        # Hashed on the second thread from two alternating buffers: in order, every byte once.
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest(), size


@pytest.mark.parametrize("segment_size", [4096, 1 << 20])
def test_we_decrypt_tinks_stream(segment_size):
    dek, aad = os.urandom(32), b"associated"
    tink_aead = tink_primitive(dek, segment_size)
    for size in boundary_sizes(segment_size):
        data = os.urandom(size)
        sink = Sink()
        with tink_aead.new_encrypting_stream(sink, aad) as enc:
            enc.write(data)
        ciphertext = sink.written
        layout = SegmentLayout(segment_size, size)
        assert len(ciphertext) == layout.stream_length, size
        decryptor = StreamDecryptor(io.BytesIO(ciphertext), dek=dek, associated_data=aad, layout=layout)
        assert b"".join(bytes(s) for s in decryptor.segments()) == data, size


def test_tink_refuses_our_stream_under_other_associated_data():
    dek = os.urandom(32)
    out = io.BytesIO()
    encrypt_stream(
        io.BytesIO(b"x" * 5000), out, dek=dek, associated_data=b"a", layout=SegmentLayout(4096, 5000),
        digest=hashlib.sha256(),
    )  # fmt: skip
    with pytest.raises(tink.TinkError):
        with tink_primitive(dek, 4096).new_decrypting_stream(io.BytesIO(out.getvalue()), b"b") as dec:
            dec.read()


def test_a_sealed_file_is_a_header_followed_by_a_tink_stream(kek_public, kek_private):
    data = hashlib.shake_256(b"sealed").digest(3 << 20)
    sealed = io.BytesIO()
    seal(io.BytesIO(data), sealed, kek_public, {"dataset_id": "d1"})
    blob = sealed.getvalue()
    header = inspect(io.BytesIO(blob))
    dek = kek_private.unwrap(
        header.key.wrapped_dek, kek_id=header.key.kek_id, kek_thumbprint=header.key.kek_thumbprint
    )
    aead = tink_primitive(dek, header.content.segment_size)
    with aead.new_decrypting_stream(io.BytesIO(blob[header.size :]), header.content.stream_associated_data()) as dec:
        assert dec.read() == data
