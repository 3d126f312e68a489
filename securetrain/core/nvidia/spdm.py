"""The SPDM 1.1 GET_MEASUREMENTS exchange an NVIDIA Hopper GPU returns as its attestation report.

The report NVIDIA's driver hands out (``nvmlDeviceGetConfComputeGpuAttestationReport``) is the requester's
GET_MEASUREMENTS request (37 bytes) followed by the GPU's MEASUREMENTS response, laid out as DMTF's SPDM 1.1
specification (DSP0274 1.1, sections 10.11-10.12) and NVIDIA's verifier (github.com/NVIDIA/nvtrust,
``local_gpu_verifier/.../attestation/spdm_msrt_{req,resp}_msg.py``) describe:

request:   SPDMVersion(1) RequestResponseCode=0xE0(1) Param1(1) Param2(1) Nonce(32) SlotIDParam(1)
response:  SPDMVersion(1) RequestResponseCode=0x60(1) Param1(1) Param2(1) NumberOfBlocks(1)
           MeasurementRecordLength(3, LE) MeasurementRecord(L1) Nonce(32) OpaqueLength(2, LE)
           OpaqueData(L2) Signature(96: ECDSA P-384 r || s, big-endian)
block:     Index(1) MeasurementSpecification=1 (DMTF)(1) MeasurementSize(2, LE)
           DMTFSpecMeasurementValueType(1) DMTFSpecMeasurementValueSize(2, LE) DMTFSpecMeasurementValue

The classes also write the same bytes back (the local stack's simulated GPU signs reports through them).
Only the exchange this product asks for is accepted: SPDM 1.1, a signed request (Param1 bit 0) for every
measurement (Param2 = 0xFF). Every length is checked against the bytes that carry it and nothing may be left
over, so no byte of a report goes unread; each refusal names the field. The signature covers every byte of
request and response before the signature (SPDM 1.1's L1/L2 transcript of this single exchange); checking it
is :mod:`securetrain.core.nvidia.verifier`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from securetrain.core.nvidia.errors import SpdmFormatError
from securetrain.core.nvidia.opaque import OpaqueData
from securetrain.core.nvidia.wire import FieldReader

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
SIGNATURE_REQUESTED = 0x01
ALL_MEASUREMENTS = 0xFF
DMTF_MEASUREMENT_SPECIFICATION = 0x01
NONCE_SIZE = 32
SIGNATURE_SIZE = 96  # ECDSA P-384: r and s, 48 bytes each
REQUEST_SIZE = 4 + NONCE_SIZE + 1
_MAX_SLOT = 7
_MAX_OPAQUE_LENGTH = 1024  # DSP0274 1.1: OpaqueLength shall not exceed 1024


@dataclass(frozen=True)
class MeasurementsRequest:
    """The requester's GET_MEASUREMENTS: which slot's key must sign, and the nonce that makes the answer fresh."""

    nonce: bytes
    slot: int

    @classmethod
    def from_bytes(cls, data: bytes) -> MeasurementsRequest:
        """Read exactly :data:`REQUEST_SIZE` bytes of request."""
        if len(data) != REQUEST_SIZE:
            raise SpdmFormatError(f"request: {len(data)} bytes, expected {REQUEST_SIZE}")
        _expect(data[0], SPDM_VERSION_1_1, "request SPDMVersion")
        _expect(data[1], GET_MEASUREMENTS, "request RequestResponseCode (GET_MEASUREMENTS)")
        _expect(data[2], SIGNATURE_REQUESTED, "request Param1 (signature requested)")
        _expect(data[3], ALL_MEASUREMENTS, "request Param2 (all measurements)")
        slot = data[4 + NONCE_SIZE]
        if slot > _MAX_SLOT:
            raise SpdmFormatError(f"request SlotIDParam is {slot}, beyond the last slot {_MAX_SLOT}")
        return cls(nonce=bytes(data[4 : 4 + NONCE_SIZE]), slot=slot)

    def to_bytes(self) -> bytes:
        """The request as sent: the form :meth:`from_bytes` reads."""
        if len(self.nonce) != NONCE_SIZE or not 0 <= self.slot <= _MAX_SLOT:
            raise SpdmFormatError("request: the nonce must be 32 bytes and the slot 0-7")
        return bytes([SPDM_VERSION_1_1, GET_MEASUREMENTS, SIGNATURE_REQUESTED, ALL_MEASUREMENTS]) + self.nonce + bytes([self.slot])


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block: its index, value type and value (a SHA-384 digest on Hopper)."""

    index: int
    value_type: int
    value: bytes

    def to_dict(self) -> dict[str, Any]:
        """Index, value type and value (hex), JSON-ready."""
        return {"index": self.index, "value_type": self.value_type, "value": self.value.hex()}

    def to_bytes(self) -> bytes:
        """The block as a response carries it."""
        measurement = bytes([self.value_type]) + len(self.value).to_bytes(2, "little") + self.value
        return bytes([self.index, DMTF_MEASUREMENT_SPECIFICATION]) + len(measurement).to_bytes(2, "little") + measurement


@dataclass(frozen=True)
class MeasurementsResponse:
    """The GPU's MEASUREMENTS response: measurement blocks, the responder's nonce, opaque data, signature."""

    slot: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: OpaqueData
    signature: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> MeasurementsResponse:
        """Read a whole response, every byte accounted for."""
        reader = FieldReader(data, "response")
        _expect(reader.u8("SPDMVersion"), SPDM_VERSION_1_1, "response SPDMVersion")
        _expect(reader.u8("RequestResponseCode"), MEASUREMENTS, "response RequestResponseCode (MEASUREMENTS)")
        # Param1 is reserved when all measurements are requested; Param2 carries the slot in bits 0-3.
        _expect(reader.u8("Param1"), 0, "response Param1 (reserved)")
        param2 = reader.u8("Param2")
        if param2 & 0xF0:
            raise SpdmFormatError(f"response Param2 is {param2:#04x}: its reserved bits 4-7 must be zero")
        number_of_blocks = reader.u8("NumberOfBlocks")
        record_length = reader.u24("MeasurementRecordLength")
        blocks = _measurement_record(reader.take(record_length, "MeasurementRecord"), number_of_blocks)
        responder_nonce = reader.take(NONCE_SIZE, "Nonce")
        opaque_length = reader.u16("OpaqueLength")
        if opaque_length > _MAX_OPAQUE_LENGTH:
            raise SpdmFormatError(f"response OpaqueLength {opaque_length} exceeds SPDM's {_MAX_OPAQUE_LENGTH}")
        opaque = OpaqueData.from_bytes(reader.take(opaque_length, "OpaqueData"))
        signature = reader.take(SIGNATURE_SIZE, "Signature")
        reader.finish()
        return cls(param2 & 0x0F, blocks, responder_nonce, opaque, signature)

    def unsigned_bytes(self) -> bytes:
        """The response up to its signature: what, after the request, the signature covers."""
        record = b"".join(block.to_bytes() for block in self.blocks)
        opaque = self.opaque.to_bytes()
        return (
            bytes([SPDM_VERSION_1_1, MEASUREMENTS, 0, self.slot, len(self.blocks)])
            + len(record).to_bytes(3, "little")
            + record
            + self.responder_nonce
            + len(opaque).to_bytes(2, "little")
            + opaque
        )

    def to_bytes(self) -> bytes:
        """The whole response: the form :meth:`from_bytes` reads."""
        return self.unsigned_bytes() + self.signature

    def measurements(self) -> dict[int, bytes]:
        """The measurement values by index."""
        return {block.index: block.value for block in self.blocks}


@dataclass(frozen=True)
class GpuAttestationReport:
    """A GPU attestation report: the request, the response, and the bytes the signature covers."""

    request: MeasurementsRequest
    response: MeasurementsResponse
    signed: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> GpuAttestationReport:
        """Read request + response as NVIDIA's driver returns them."""
        if len(data) <= REQUEST_SIZE + SIGNATURE_SIZE:
            raise SpdmFormatError(f"report: {len(data)} bytes is too short for a request and a signed response")
        request = MeasurementsRequest.from_bytes(data[:REQUEST_SIZE])
        response = MeasurementsResponse.from_bytes(data[REQUEST_SIZE:])
        if response.slot != request.slot:
            raise SpdmFormatError(f"response answers slot {response.slot}, but the request asked slot {request.slot}")
        return cls(request, response, bytes(data[: len(data) - SIGNATURE_SIZE]))

    def to_bytes(self) -> bytes:
        """Request and response, as NVIDIA's driver returns them."""
        return self.request.to_bytes() + self.response.to_bytes()

    @property
    def nonce(self) -> bytes:
        """The requester's nonce: what makes this report fresh for whoever chose it."""
        return self.request.nonce

    def to_dict(self) -> dict[str, Any]:
        """The report's fields, JSON-ready."""
        return {
            "nonce": self.request.nonce.hex(),
            "slot": self.request.slot,
            "responder_nonce": self.response.responder_nonce.hex(),
            "measurements": [block.to_dict() for block in self.response.blocks],
            "opaque": self.response.opaque.to_dict(),
        }


def _measurement_record(record: bytes, number_of_blocks: int) -> tuple[MeasurementBlock, ...]:
    if number_of_blocks == 0:
        raise SpdmFormatError("response NumberOfBlocks is 0: a report without measurements attests nothing")
    reader = FieldReader(record, "MeasurementRecord")
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    for position in range(number_of_blocks):
        where = f"measurement block {position + 1}"
        index = reader.u8(f"{where} Index")
        if index in seen or index in (0x00, 0xFF):
            raise SpdmFormatError(f"{where}: Index {index} is reserved or repeated")
        seen.add(index)
        _expect(reader.u8(f"{where} MeasurementSpecification"), DMTF_MEASUREMENT_SPECIFICATION, f"{where} specification (DMTF)")
        size = reader.u16(f"{where} MeasurementSize")
        measurement = FieldReader(reader.take(size, f"{where} Measurement"), where)
        value_type = measurement.u8("DMTFSpecMeasurementValueType")
        value_size = measurement.u16("DMTFSpecMeasurementValueSize")
        value = measurement.take(value_size, "DMTFSpecMeasurementValue")
        measurement.finish()
        blocks.append(MeasurementBlock(index, value_type, value))
    reader.finish()
    return tuple(blocks)


def _expect(actual: int, expected: int, field: str) -> None:
    if actual != expected:
        raise SpdmFormatError(f"{field} is {actual:#04x}, expected {expected:#04x}")
