"""The NVIDIA opaque data in a GPU's MEASUREMENTS response: driver and VBIOS versions, FWID and more.

SPDM leaves the OpaqueData field to the vendor; NVIDIA fills it with type-length-value entries, each a
little-endian 16-bit type, a little-endian 16-bit length and that many bytes, the types numbered as in
NVIDIA's verifier (github.com/NVIDIA/nvtrust, ``OpaqueData.OPAQUE_DATA_TYPES``). The opaque data is inside the
signed response, so once the signature verifies its values are the GPU's word.

The fields this product reads are decoded: the driver version (a NUL-terminated string), the VBIOS version
(8 bytes, shown as NVIDIA shows it, e.g. ``96.00.9F.00.01``), and the FWID (the SHA-384 of the firmware that
holds the attestation key, which must equal the one in the leaf certificate's TCG DICE extension). The others
are kept by name, raw. A type NVIDIA does not define, a repeated type or an entry running past the data is
refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from securetrain.core.nvidia.errors import SpdmFormatError
from securetrain.core.nvidia.wire import FieldReader

OPAQUE_FIELD_NAMES: Mapping[int, str] = {
    1: "CERT_ISSUER_NAME",
    2: "CERT_AUTHORITY_KEY_IDENTIFIER",
    3: "DRIVER_VERSION",
    4: "GPU_INFO",
    5: "SKU",
    6: "VBIOS_VERSION",
    7: "MANUFACTURER_ID",
    8: "TAMPER_DETECTION",
    9: "SMC",
    10: "VPR",
    11: "NVDEC0_STATUS",
    12: "MSRSCNT",
    13: "CPRINFO",
    14: "BOARD_ID",
    15: "CHIP_SKU",
    16: "CHIP_SKU_MOD",
    17: "PROJECT",
    18: "PROJECT_SKU",
    19: "PROJECT_SKU_MOD",
    20: "FWID",
    21: "PROTECTED_PCIE_STATUS",
    22: "SWITCH_PDI",
    23: "FLOORSWEPT_PORTS",
    24: "POSITION_ID",
    25: "LOCK_SWITCH_STATUS",
    32: "GPU_LINK_CONN",
    33: "SYS_ENABLE_STATUS",
    34: "OPAQUE_DATA_VERSION",
    35: "CHIP_INFO",
    36: "FEATURE_FLAG",
}
_VBIOS_VERSION_SIZE = 8


@dataclass(frozen=True)
class OpaqueData:
    """The opaque data's entries by NVIDIA's field name, raw bytes."""

    fields: Mapping[str, bytes]

    @classmethod
    def from_bytes(cls, data: bytes) -> OpaqueData:
        """Read the whole opaque data as type-length-value entries."""
        reader = FieldReader(data, "OpaqueData")
        fields: dict[str, bytes] = {}
        while reader.remaining:
            field_type = reader.u16("entry DataType")
            name = OPAQUE_FIELD_NAMES.get(field_type)
            if name is None:
                raise SpdmFormatError(f"OpaqueData: entry type {field_type} is not one NVIDIA defines")
            if name in fields:
                raise SpdmFormatError(f"OpaqueData: {name} appears twice")
            fields[name] = reader.take(reader.u16(f"{name} DataSize"), f"{name} Data")
        opaque = cls(fields)
        # Decode the fields this product reads now, so a malformed one is refused with the report, not later.
        opaque.driver_version  # noqa: B018 - decoding checks the field
        opaque.vbios_version  # noqa: B018
        return opaque

    def to_bytes(self) -> bytes:
        """The entries as type-length-value, in their order: the form :meth:`from_bytes` reads."""
        types = {name: field_type for field_type, name in OPAQUE_FIELD_NAMES.items()}
        return b"".join(
            types[name].to_bytes(2, "little") + len(value).to_bytes(2, "little") + value for name, value in self.fields.items()
        )

    def get(self, name: str) -> bytes | None:
        """The raw value of field ``name`` (e.g. ``"FWID"``), or None if the GPU did not send it."""
        return self.fields.get(name)

    @property
    def driver_version(self) -> str | None:
        """The driver version the GPU reports (e.g. ``550.90.07``)."""
        value = self.get("DRIVER_VERSION")
        if value is None:
            return None
        text, nul, _ = value.partition(b"\x00")
        if not nul:
            raise SpdmFormatError("OpaqueData: DRIVER_VERSION is not NUL-terminated")
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise SpdmFormatError("OpaqueData: DRIVER_VERSION is not ASCII") from None

    @property
    def vbios_version(self) -> str | None:
        """The VBIOS version as NVIDIA writes it: bytes 3,2,1,0 then 4 of the field, e.g. ``96.00.9F.00.01``."""
        value = self.get("VBIOS_VERSION")
        if value is None:
            return None
        if len(value) != _VBIOS_VERSION_SIZE:
            raise SpdmFormatError(f"OpaqueData: VBIOS_VERSION is {len(value)} bytes, expected {_VBIOS_VERSION_SIZE}")
        return ".".join(f"{byte:02X}" for byte in (value[3], value[2], value[1], value[0], value[4]))

    def to_dict(self) -> dict[str, Any]:
        """Every field (hex), with the decoded versions, JSON-ready."""
        return {
            "fields": {name: value.hex() for name, value in self.fields.items()},
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
        }
