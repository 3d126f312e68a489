"""The TPM quote reader: the genuine Azure vTPM quote reads and writes back byte for byte; anything but its
shape is refused with the project's error, hostile bytes included."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError
from securetrain.core.azure_cvm.tpm import TpmQuote

CVM = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "azure-cvm"
DOCUMENT = json.loads(CVM.joinpath("evidence.json").read_text())["report"]["snpCvm"]
GENUINE = base64.b64decode(DOCUMENT["evidence"]["tpmQuote"])
# TPM2B_ATTEST: 2 size bytes, then TPMS_ATTEST; the offsets below are within the whole quote.
ATTEST_SIZE = struct.unpack(">H", GENUINE[:2])[0]
_MAGIC, _TYPE, _SIGNER, _EXTRA = 2, 6, 8, 44
_SAFE = _EXTRA + 2 + 32 + 16
_COUNT = _SAFE + 1 + 8
_BANK, _SELECT_SIZE, _SELECT, _DIGEST = _COUNT + 4, _COUNT + 6, _COUNT + 7, _COUNT + 10
SIGNATURE_START = 2 + ATTEST_SIZE


def replaced(offset: int, value: bytes, data: bytes = GENUINE) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def test_genuine_quote_reads_as_the_vtpm_wrote_it() -> None:
    quote = TpmQuote.from_bytes(GENUINE)
    attestation = quote.attestation
    assert attestation.extra_data == base64.b64decode(DOCUMENT["nonce"])
    assert attestation.pcr_indexes == tuple(range(24))
    assert attestation.qualified_signer[:2] == b"\x00\x0b"
    assert attestation.clock_info.safe is True
    assert len(quote.signature.signature) == 256
    assert quote.attested == GENUINE[2:SIGNATURE_START]


def test_round_trip_is_exact() -> None:
    quote = TpmQuote.from_bytes(GENUINE)
    assert quote.to_bytes() == GENUINE
    assert quote.attestation.to_bytes() == quote.attested


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "ends inside TPM2B_ATTEST size"),
        (GENUINE[:100], "ends inside TPMS_ATTEST"),
        (GENUINE + b"\x00", "1 bytes follow the TPMT_SIGNATURE"),
        (replaced(0, struct.pack(">H", ATTEST_SIZE - 1)), "TPMS_ATTEST ends inside pcrDigest"),
        (replaced(0, struct.pack(">H", ATTEST_SIZE + 1)), "1 bytes follow the TPMS_ATTEST"),
        (replaced(_MAGIC, b"\xff\x54\x43\x48"), "magic"),
        (replaced(_TYPE, b"\x80\x17"), "type is 0x8017"),
        (replaced(_SIGNER + 2, b"\x00\x04"), "SHA-256 TPM name"),
        (replaced(_EXTRA, b"\x00\x41"), "extraData is 65 bytes"),
        (replaced(_SAFE, b"\x02"), "safe is 2"),
        (replaced(_COUNT, b"\x00\x00\x00\x02"), "2 PCR banks"),
        (replaced(_BANK, b"\x00\x04"), "bank 0x0004"),
        (replaced(_SELECT_SIZE, b"\x04"), "sizeofSelect is 4"),
        (replaced(_SELECT, b"\x00\x00\x00"), "selects no PCR"),
        (replaced(_DIGEST, b"\x00\x14"), "pcrDigest is 20 bytes"),
        (replaced(SIGNATURE_START, b"\x00\x16"), "RSASSA"),
        (replaced(SIGNATURE_START + 2, b"\x00\x0c"), "SHA-256"),
        (GENUINE[: SIGNATURE_START + 4] + b"\x00\x00", "signature is empty"),
        (GENUINE[: SIGNATURE_START + 4] + b"\x02\x01" + bytes(513), "more than 512"),
    ],
)
def test_anything_but_the_quote_shape_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(CvmEvidenceError, match=reason) as refused:
        TpmQuote.from_bytes(data)
    assert refused.value.check is Check.QUOTE_LAYOUT


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_the_projects_error(data: bytes) -> None:
    try:
        TpmQuote.from_bytes(data)
    except CvmEvidenceError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(GENUINE) - 1), st.integers(1, 255))
def test_single_byte_mutations_refuse_or_read_back_exactly(offset: int, mask: int) -> None:
    mutated = replaced(offset, bytes([GENUINE[offset] ^ mask]))
    try:
        quote = TpmQuote.from_bytes(mutated)
    except CvmEvidenceError:
        return
    assert quote.to_bytes() == mutated
