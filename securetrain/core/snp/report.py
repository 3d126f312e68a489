"""The SEV-SNP ATTESTATION_REPORT, byte for byte as the AMD SEV-SNP firmware ABI specification lays it out.

A report is 0x4A0 (1184) bytes; the AMD secure processor signs bytes 0x000-0x29F with the chip's VCEK
and puts the signature at 0x2A0. :meth:`AttestationReport.from_bytes` decodes every field and
:meth:`AttestationReport.to_bytes` writes the same bytes back, so that nothing in a report is
ignored: reserved fields must be zero (or, for guest-policy bit 17, one), as go-sev-guest also
insists, because a verifier that skips bytes it does not understand cannot say what it approved.

Versions accepted: 2 (Milan and early Genoa firmware) and 3 (adds CPUID family, model and stepping at
0x188-0x18A). Later versions are refused: version 5 fills the reserved area at 0x1F8 with mitigation
vectors, and comes with Turin, whose TCB_VERSION layout (an FMC byte first) differs from the
Milan/Genoa layout decoded here; accepting it would mean reading SVNs from the wrong bytes. For the
same reason a version 3 report whose CPUID family is not 0x19 (Zen 3/4: Milan, Genoa) is refused.

Only the layout is checked here; whether the signature, chain and contents are acceptable is
:mod:`securetrain.core.snp.verifier`'s and the attestation policy's business.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from securetrain.core.errors import ConfigurationError
from securetrain.core.snp.errors import SnpEvidenceError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = (2, 3)
ECDSA_P384_SHA384 = 1
# CPUID family (extended family + family) of Zen 3 and Zen 4, whose TCB_VERSION layout is decoded here.
ZEN3_ZEN4_FAMILY = 0x19

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

# Offsets of the fields (AMD SEV-SNP ABI specification, ATTESTATION_REPORT structure).
_VERSION = 0x000
_GUEST_SVN = 0x004
_POLICY = 0x008
_FAMILY_ID = 0x010
_IMAGE_ID = 0x020
_VMPL = 0x030
_SIGNATURE_ALGO = 0x034
_CURRENT_TCB = 0x038
_PLATFORM_INFO = 0x040
_KEY_INFO = 0x048
_REPORT_DATA = 0x050
_MEASUREMENT = 0x090
_HOST_DATA = 0x0C0
_ID_KEY_DIGEST = 0x0E0
_AUTHOR_KEY_DIGEST = 0x110
_REPORT_ID = 0x140
_REPORT_ID_MA = 0x160
_REPORTED_TCB = 0x180
_CPUID_FAM_ID = 0x188
_CPUID_MOD_ID = 0x189
_CPUID_STEP = 0x18A
_CHIP_ID = 0x1A0
_COMMITTED_TCB = 0x1E0
_CURRENT_VERSION = 0x1E8
_COMMITTED_VERSION = 0x1EC
_LAUNCH_TCB = 0x1F0
_SIGNATURE = SIGNED_SIZE

# Byte ranges [start, end) that must be zero, by report version.
_RESERVED_COMMON = ((0x04C, 0x050), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x1F8, SIGNED_SIZE))
_RESERVED_BY_VERSION = {2: ((0x188, 0x1A0),), 3: ((0x18B, 0x1A0),)}

# Sizes of the byte-string fields, for the checks in AttestationReport.__post_init__.
_BYTE_FIELDS = {
    "family_id": 16,
    "image_id": 16,
    "report_data": 64,
    "measurement": 48,
    "host_data": 32,
    "id_key_digest": 48,
    "author_key_digest": 48,
    "report_id": 32,
    "report_id_ma": 32,
    "chip_id": 64,
}


class ReportFormatError(SnpEvidenceError):
    """The bytes are not an ATTESTATION_REPORT this verifier understands; the message says which field."""


class ReportSizeError(ReportFormatError):
    """The report is truncated or oversized."""


class UnsupportedReportVersion(ReportFormatError):
    """The report's VERSION is not one whose layout this verifier decodes."""


class UnsupportedSignatureAlgorithm(ReportFormatError):
    """SIGNATURE_ALGO is not ECDSA P-384 with SHA-384, the only algorithm the ABI defines."""


class UnsupportedProcessor(ReportFormatError):
    """The report comes from a processor family whose TCB layout this verifier does not decode."""


class ReservedFieldSet(ReportFormatError):
    """A reserved field does not hold the value the ABI requires (zero, or one for policy bit 17)."""


class FieldValueError(ConfigurationError):
    """A field of a report being built (not parsed: parsed fields always fit) has the wrong size or range."""


def _check_uint(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise FieldValueError(f"{name} must be between 0 and {maximum}, got {value}")


def _check_supported(version: int, signature_algorithm: int) -> None:
    if version not in SUPPORTED_VERSIONS:
        accepted = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise UnsupportedReportVersion(f"report VERSION {version} is not supported (accepted: {accepted})")
    if signature_algorithm != ECDSA_P384_SHA384:
        raise UnsupportedSignatureAlgorithm(
            f"report SIGNATURE_ALGO {signature_algorithm} is not supported "
            f"(accepted: {ECDSA_P384_SHA384}, ECDSA P-384 with SHA-384)"
        )


def _check_zero(data: bytes, start: int, end: int, *, base: int = 0) -> None:
    """Refuse unless ``data[start:end]`` is all zero; ``base`` is where ``data`` lies in the report, for the message."""
    for offset in range(start, end):
        if data[offset]:
            raise ReservedFieldSet(
                f"reserved bytes 0x{base + start:03X}-0x{base + end - 1:03X} must be zero, "
                f"found 0x{data[offset]:02x} at 0x{base + offset:03X}"
            )


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION in the Milan/Genoa layout: security version numbers of the platform's firmware.

    Byte 0 is the AMD secure processor's bootloader SVN, byte 1 its OS (TEE) SVN, bytes 2-5 are
    reserved, byte 6 is the SNP firmware SVN and byte 7 the CPU microcode patch level.
    """

    COMPONENTS: ClassVar[tuple[str, ...]] = ("bootloader", "tee", "snp", "microcode")

    bootloader: int
    tee: int
    snp: int
    microcode: int

    def __post_init__(self) -> None:
        for name in self.COMPONENTS:
            _check_uint(f"TCB {name} SVN", getattr(self, name), 0xFF)

    @classmethod
    def from_bytes(cls, raw: bytes, field: str) -> TcbVersion:
        """Decode the 8 bytes of TCB_VERSION ``field`` (its name is used in errors)."""
        if len(raw) != 8:
            raise FieldValueError(f"{field} must be 8 bytes, got {len(raw)}")
        if any(raw[2:6]):
            raise ReservedFieldSet(f"{field} reserved bytes 2-5 must be zero, found {raw.hex()}")
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def to_bytes(self) -> bytes:
        """The 8-byte TCB_VERSION."""
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def components_below(self, minimum: TcbVersion) -> list[str]:
        """The names of the components of this TCB that are lower than in ``minimum``."""
        return [name for name in self.COMPONENTS if getattr(self, name) < getattr(minimum, name)]

    def to_dict(self) -> dict[str, int]:
        """The components by name."""
        return {name: getattr(self, name) for name in self.COMPONENTS}


@dataclass(frozen=True)
class GuestPolicy:
    """The guest POLICY the guest owner fixed at launch; the firmware enforces it for the VM's lifetime."""

    # Single-bit flags by bit number; bits 0-7 and 8-15 are the minimum ABI minor and major version.
    FLAGS: ClassVar[dict[str, int]] = {
        "smt": 16,
        "migrate_ma": 18,
        "debug": 19,
        "single_socket": 20,
        "cxl_allow": 21,
        "mem_aes_256_xts": 22,
        "rapl_dis": 23,
        "ciphertext_hiding_dram": 24,
        "page_swap_disable": 25,
    }
    # Bit 17 is reserved and must be one; bits 26-63 are reserved and must be zero.
    _RESERVED_ONE: ClassVar[int] = 1 << 17
    _RESERVED_ZERO: ClassVar[int] = _U64_MAX & ~((1 << 26) - 1)

    value: int

    def __post_init__(self) -> None:
        _check_uint("POLICY", self.value, _U64_MAX)
        if not self.value & self._RESERVED_ONE:
            raise ReservedFieldSet(f"POLICY 0x{self.value:x}: reserved bit 17 must be one")
        if self.value & self._RESERVED_ZERO:
            raise ReservedFieldSet(
                f"POLICY 0x{self.value:x}: reserved bits 26-63 must be zero, "
                f"found 0x{self.value & self._RESERVED_ZERO:x}"
            )

    @classmethod
    def build(
        cls,
        *,
        debug: bool = False,
        migrate_ma: bool = False,
        smt: bool = True,
        single_socket: bool = False,
        abi_major: int = 0,
        abi_minor: int = 0,
    ) -> GuestPolicy:
        """A policy with the given flags and minimum ABI version (everything else off)."""
        _check_uint("ABI major", abi_major, 0xFF)
        _check_uint("ABI minor", abi_minor, 0xFF)
        value = cls._RESERVED_ONE | abi_major << 8 | abi_minor
        for name, enabled in (
            ("debug", debug),
            ("migrate_ma", migrate_ma),
            ("smt", smt),
            ("single_socket", single_socket),
        ):
            if enabled:
                value |= 1 << cls.FLAGS[name]
        return cls(value)

    def flag(self, name: str) -> bool:
        """Whether flag ``name`` (a key of :attr:`FLAGS`) is set."""
        return bool(self.value >> self.FLAGS[name] & 1)

    @property
    def debug(self) -> bool:
        """The hypervisor may debug the guest, i.e. read and write its memory: never for secrets."""
        return self.flag("debug")

    @property
    def migrate_ma(self) -> bool:
        """The guest may be associated with a migration agent, which can export its memory."""
        return self.flag("migrate_ma")

    @property
    def abi_major(self) -> int:
        """The minimum firmware ABI major version the guest runs on."""
        return self.value >> 8 & 0xFF

    @property
    def abi_minor(self) -> int:
        """The minimum firmware ABI minor version the guest runs on."""
        return self.value & 0xFF

    def to_dict(self) -> dict[str, Any]:
        """The raw value and every decoded field."""
        return {
            "value": f"0x{self.value:x}",
            "abi_major": self.abi_major,
            "abi_minor": self.abi_minor,
            **{name: self.flag(name) for name in self.FLAGS},
        }


@dataclass(frozen=True)
class PlatformInfo:
    """PLATFORM_INFO: how the host platform is configured. Informational: bits unknown here are kept, not refused."""

    FLAGS: ClassVar[dict[str, int]] = {
        "smt_enabled": 0,
        "tsme_enabled": 1,
        "ecc_enabled": 2,
        "rapl_disabled": 3,
        "ciphertext_hiding_enabled": 4,
        "alias_check_complete": 5,
        "tio_enabled": 7,
    }

    value: int

    def __post_init__(self) -> None:
        _check_uint("PLATFORM_INFO", self.value, _U64_MAX)

    def flag(self, name: str) -> bool:
        """Whether flag ``name`` (a key of :attr:`FLAGS`) is set."""
        return bool(self.value >> self.FLAGS[name] & 1)

    def to_dict(self) -> dict[str, Any]:
        """The raw value and every decoded flag."""
        return {"value": f"0x{self.value:x}", **{name: self.flag(name) for name in self.FLAGS}}


class SigningKey(enum.IntEnum):
    """Which key signed the report (KEY_INFO bits 2-4); values 2-6 are reserved."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class FirmwareVersion:
    """An SNP firmware version: major.minor and build."""

    major: int
    minor: int
    build: int

    def __post_init__(self) -> None:
        for name in ("major", "minor", "build"):
            _check_uint(f"firmware {name}", getattr(self, name), 0xFF)

    @classmethod
    def from_bytes(cls, raw: bytes, field: str) -> FirmwareVersion:
        """Decode the 4 bytes build, minor, major, reserved of ``field``."""
        if raw[3]:
            raise ReservedFieldSet(f"{field}: reserved byte must be zero, found 0x{raw[3]:02x}")
        return cls(major=raw[2], minor=raw[1], build=raw[0])

    def to_bytes(self) -> bytes:
        """The 4 bytes build, minor, major, reserved."""
        return bytes([self.build, self.minor, self.major, 0])

    def __str__(self) -> str:
        return f"{self.major}.{self.minor} build {self.build}"


@dataclass(frozen=True)
class Cpuid:
    """The processor that produced a version 3 report: CPUID family, model and stepping."""

    family: int
    model: int
    stepping: int

    def __post_init__(self) -> None:
        for name in ("family", "model", "stepping"):
            _check_uint(f"CPUID {name}", getattr(self, name), 0xFF)
        if self.family != ZEN3_ZEN4_FAMILY:
            raise UnsupportedProcessor(
                f"CPUID family 0x{self.family:02x} is not supported: only family 0x{ZEN3_ZEN4_FAMILY:02x} "
                "(Milan, Genoa) reports use the TCB layout this verifier decodes"
            )

    def to_dict(self) -> dict[str, int]:
        """Family, model and stepping."""
        return {"family": self.family, "model": self.model, "stepping": self.stepping}


@dataclass(frozen=True)
class EcdsaSignature:
    """An ECDSA P-384 signature as the ABI stores it: r and s as 72-byte little-endian integers."""

    COMPONENT_SIZE: ClassVar[int] = 72
    SIZE: ClassVar[int] = REPORT_SIZE - SIGNED_SIZE

    r: int
    s: int

    def __post_init__(self) -> None:
        for name in ("r", "s"):
            _check_uint(f"signature {name}", getattr(self, name), (1 << 8 * self.COMPONENT_SIZE) - 1)

    @classmethod
    def from_bytes(cls, raw: bytes) -> EcdsaSignature:
        """Decode the 512-byte SIGNATURE field; everything after r and s is reserved and must be zero."""
        size = cls.COMPONENT_SIZE
        _check_zero(raw, 2 * size, cls.SIZE, base=SIGNED_SIZE)
        return cls(
            r=int.from_bytes(raw[:size], "little"),
            s=int.from_bytes(raw[size : 2 * size], "little"),
        )

    def to_bytes(self) -> bytes:
        """The 512-byte SIGNATURE field."""
        size = self.COMPONENT_SIZE
        encoded = self.r.to_bytes(size, "little") + self.s.to_bytes(size, "little")
        return encoded + bytes(self.SIZE - len(encoded))


@dataclass(frozen=True)
class AttestationReport:
    """Every field of an ATTESTATION_REPORT, in layout order. Byte strings are raw, as in the report."""

    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algorithm: int
    current_tcb: TcbVersion
    platform_info: PlatformInfo
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid: Cpuid | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: TcbVersion
    signature: EcdsaSignature

    def __post_init__(self) -> None:
        _check_supported(self.version, self.signature_algorithm)
        _check_uint("GUEST_SVN", self.guest_svn, _U32_MAX)
        _check_uint("VMPL", self.vmpl, _U32_MAX)
        for name, size in _BYTE_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise FieldValueError(f"{name.upper()} must be {size} bytes, got {value!r:.40}")
        if (self.cpuid is None) != (self.version == 2):
            raise FieldValueError(f"CPUID is present in version 3 reports and only there (VERSION {self.version})")

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationReport:
        """Decode a report, refusing anything but exactly :data:`REPORT_SIZE` bytes of a supported layout."""
        if len(data) != REPORT_SIZE:
            problem = "truncated" if len(data) < REPORT_SIZE else "oversized"
            raise ReportSizeError(f"report is {problem}: {len(data)} bytes, an ATTESTATION_REPORT is {REPORT_SIZE}")
        version = _U32.unpack_from(data, _VERSION)[0]
        _check_supported(version, _U32.unpack_from(data, _SIGNATURE_ALGO)[0])
        for start, end in _RESERVED_COMMON + _RESERVED_BY_VERSION[version]:
            _check_zero(data, start, end)
        key_info = _U32.unpack_from(data, _KEY_INFO)[0]
        if key_info >> 5:
            raise ReservedFieldSet(f"KEY_INFO 0x{key_info:x}: reserved bits 5-31 must be zero")
        try:
            signing_key = SigningKey(key_info >> 2 & 0b111)
        except ValueError:
            raise ReservedFieldSet(f"KEY_INFO SIGNING_KEY {key_info >> 2 & 0b111} is a reserved value") from None

        def field(offset: int, size: int) -> bytes:
            return bytes(data[offset : offset + size])

        def tcb(offset: int, name: str) -> TcbVersion:
            return TcbVersion.from_bytes(field(offset, 8), name)

        return cls(
            version=version,
            guest_svn=_U32.unpack_from(data, _GUEST_SVN)[0],
            policy=GuestPolicy(_U64.unpack_from(data, _POLICY)[0]),
            family_id=field(_FAMILY_ID, 16),
            image_id=field(_IMAGE_ID, 16),
            vmpl=_U32.unpack_from(data, _VMPL)[0],
            signature_algorithm=_U32.unpack_from(data, _SIGNATURE_ALGO)[0],
            current_tcb=tcb(_CURRENT_TCB, "CURRENT_TCB"),
            platform_info=PlatformInfo(_U64.unpack_from(data, _PLATFORM_INFO)[0]),
            author_key_en=bool(key_info & 0b01),
            mask_chip_key=bool(key_info & 0b10),
            signing_key=signing_key,
            report_data=field(_REPORT_DATA, 64),
            measurement=field(_MEASUREMENT, 48),
            host_data=field(_HOST_DATA, 32),
            id_key_digest=field(_ID_KEY_DIGEST, 48),
            author_key_digest=field(_AUTHOR_KEY_DIGEST, 48),
            report_id=field(_REPORT_ID, 32),
            report_id_ma=field(_REPORT_ID_MA, 32),
            reported_tcb=tcb(_REPORTED_TCB, "REPORTED_TCB"),
            cpuid=(
                None
                if version == 2
                else Cpuid(family=data[_CPUID_FAM_ID], model=data[_CPUID_MOD_ID], stepping=data[_CPUID_STEP])
            ),
            chip_id=field(_CHIP_ID, 64),
            committed_tcb=tcb(_COMMITTED_TCB, "COMMITTED_TCB"),
            current_version=FirmwareVersion.from_bytes(field(_CURRENT_VERSION, 4), "CURRENT version"),
            committed_version=FirmwareVersion.from_bytes(field(_COMMITTED_VERSION, 4), "COMMITTED version"),
            launch_tcb=tcb(_LAUNCH_TCB, "LAUNCH_TCB"),
            signature=EcdsaSignature.from_bytes(field(_SIGNATURE, EcdsaSignature.SIZE)),
        )

    def to_bytes(self) -> bytes:
        """The report's bytes; ``from_bytes(b).to_bytes() == b`` for every report ``from_bytes`` accepts."""
        out = bytearray(REPORT_SIZE)
        _U32.pack_into(out, _VERSION, self.version)
        _U32.pack_into(out, _GUEST_SVN, self.guest_svn)
        _U64.pack_into(out, _POLICY, self.policy.value)
        _U32.pack_into(out, _VMPL, self.vmpl)
        _U32.pack_into(out, _SIGNATURE_ALGO, self.signature_algorithm)
        _U64.pack_into(out, _PLATFORM_INFO, self.platform_info.value)
        key_info = int(self.author_key_en) | int(self.mask_chip_key) << 1 | self.signing_key << 2
        _U32.pack_into(out, _KEY_INFO, key_info)
        placed = {
            _FAMILY_ID: self.family_id,
            _IMAGE_ID: self.image_id,
            _CURRENT_TCB: self.current_tcb.to_bytes(),
            _REPORT_DATA: self.report_data,
            _MEASUREMENT: self.measurement,
            _HOST_DATA: self.host_data,
            _ID_KEY_DIGEST: self.id_key_digest,
            _AUTHOR_KEY_DIGEST: self.author_key_digest,
            _REPORT_ID: self.report_id,
            _REPORT_ID_MA: self.report_id_ma,
            _REPORTED_TCB: self.reported_tcb.to_bytes(),
            _CHIP_ID: self.chip_id,
            _COMMITTED_TCB: self.committed_tcb.to_bytes(),
            _CURRENT_VERSION: self.current_version.to_bytes(),
            _COMMITTED_VERSION: self.committed_version.to_bytes(),
            _LAUNCH_TCB: self.launch_tcb.to_bytes(),
            _SIGNATURE: self.signature.to_bytes(),
        }
        if self.cpuid is not None:
            placed[_CPUID_FAM_ID] = bytes([self.cpuid.family, self.cpuid.model, self.cpuid.stepping])
        for offset, raw in placed.items():
            out[offset : offset + len(raw)] = raw
        return bytes(out)

    def signed_bytes(self) -> bytes:
        """Bytes 0x000-0x29F: what the VCEK signs."""
        return self.to_bytes()[:SIGNED_SIZE]

    def with_signature(self, signature: EcdsaSignature) -> AttestationReport:
        """This report with ``signature`` in place of its own (how a platform signs a report it built)."""
        return dataclasses.replace(self, signature=signature)

    @property
    def migration_agent_bound(self) -> bool:
        """A migration agent is associated with the guest: REPORT_ID_MA is not the all-ones "none" value."""
        return self.report_id_ma != b"\xff" * 32

    def to_dict(self) -> dict[str, Any]:
        """Every field except the signature, JSON-ready: byte strings as lowercase hex."""
        return {
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": self.policy.to_dict(),
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algorithm": "ECDSA P-384 with SHA-384",
            "current_tcb": self.current_tcb.to_dict(),
            "platform_info": self.platform_info.to_dict(),
            "author_key_en": self.author_key_en,
            "mask_chip_key": self.mask_chip_key,
            "signing_key": self.signing_key.name,
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "reported_tcb": self.reported_tcb.to_dict(),
            "cpuid": None if self.cpuid is None else self.cpuid.to_dict(),
            "chip_id": self.chip_id.hex(),
            "committed_tcb": self.committed_tcb.to_dict(),
            "current_version": str(self.current_version),
            "committed_version": str(self.committed_version),
            "launch_tcb": self.launch_tcb.to_dict(),
        }
