"""The ATTESTATION_REPORT layout: AMD's Milan report parsed field by field, byte-exact, strict."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.snp.report import (
    REPORT_SIZE,
    AttestationReport,
    Cpuid,
    FieldValueError,
    FirmwareVersion,
    GuestPolicy,
    ReportFormatError,
    ReportSizeError,
    ReservedFieldSet,
    SigningKey,
    TcbVersion,
    UnsupportedProcessor,
    UnsupportedReportVersion,
    UnsupportedSignatureAlgorithm,
)

MILAN = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "amd-snp-milan"
MILAN_REPORT = bytes.fromhex(MILAN.joinpath("report.hex").read_text())
MILAN_MEASUREMENT = bytes.fromhex(
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
)


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def test_milan_report_fields() -> None:
    report = AttestationReport.from_bytes(MILAN_REPORT)
    assert report.version == 2
    assert report.guest_svn == 0
    assert report.policy.value == 0x30000
    assert not report.policy.debug and not report.policy.migrate_ma and report.policy.flag("smt")
    assert report.family_id == bytes(16) and report.image_id == bytes(16)
    assert report.vmpl == 0
    assert report.signature_algorithm == 1
    milan_tcb = TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
    assert report.current_tcb == report.reported_tcb == report.committed_tcb == report.launch_tcb == milan_tcb
    assert report.platform_info.flag("smt_enabled") and not report.platform_info.flag("tsme_enabled")
    assert (report.author_key_en, report.mask_chip_key, report.signing_key) == (False, False, SigningKey.VCEK)
    assert report.report_data.hex().startswith("d447b55d")
    assert report.measurement == MILAN_MEASUREMENT
    assert report.host_data == bytes(32)
    assert report.id_key_digest == bytes(48) and report.author_key_digest == bytes(48)
    assert report.report_id.hex().startswith("92b3b47d")
    assert report.report_id_ma == b"\xff" * 32 and not report.migration_agent_bound
    assert report.cpuid is None
    assert report.chip_id.hex().startswith("d49554ec") and report.chip_id.hex().endswith("541eb6")
    assert report.current_version == report.committed_version == FirmwareVersion(major=1, minor=52, build=4)
    assert report.signature.r.to_bytes(72, "little").hex().startswith("61ab4f11")
    assert report.signature.s.to_bytes(72, "little").hex().startswith("209d7eb9")


def test_round_trip_is_byte_exact() -> None:
    report = AttestationReport.from_bytes(MILAN_REPORT)
    assert report.to_bytes() == MILAN_REPORT
    assert report.signed_bytes() == MILAN_REPORT[:0x2A0]


def test_to_dict_is_json_ready() -> None:
    claims = AttestationReport.from_bytes(MILAN_REPORT).to_dict()
    assert claims["measurement"] == MILAN_MEASUREMENT.hex()
    assert claims["policy"]["debug"] is False
    assert claims["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert claims["current_version"] == "1.52 build 4"
    assert claims["signing_key"] == "VCEK"


@pytest.mark.parametrize(
    ("size", "problem"), [(0, "truncated"), (1183, "truncated"), (672, "truncated"), (1185, "oversized")]
)
def test_wrong_sizes_are_refused(size: int, problem: str) -> None:
    data = (MILAN_REPORT + bytes(8))[:size]
    with pytest.raises(ReportSizeError, match=f"{problem}: {size} bytes"):
        AttestationReport.from_bytes(data)


@pytest.mark.parametrize("version", [0, 1, 4, 5, 0xFFFFFFFF])
def test_unknown_versions_are_refused(version: int) -> None:
    with pytest.raises(UnsupportedReportVersion, match=f"VERSION {version} is not supported"):
        AttestationReport.from_bytes(patched(MILAN_REPORT, 0, struct.pack("<I", version)))


@pytest.mark.parametrize("algorithm", [0, 2, 0x100])
def test_unknown_signature_algorithms_are_refused(algorithm: int) -> None:
    with pytest.raises(UnsupportedSignatureAlgorithm, match=f"SIGNATURE_ALGO {algorithm}"):
        AttestationReport.from_bytes(patched(MILAN_REPORT, 0x34, struct.pack("<I", algorithm)))


@pytest.mark.parametrize(
    "offset",
    [0x04C, 0x04F, 0x188, 0x18A, 0x19F, 0x1EB, 0x1EF, 0x1F8, 0x200, 0x29F, 0x330, 0x49F],
    ids=hex,
)
def test_reserved_bytes_must_be_zero(offset: int) -> None:
    with pytest.raises(ReservedFieldSet, match="must be zero"):
        AttestationReport.from_bytes(patched(MILAN_REPORT, offset, b"\x01"))


@pytest.mark.parametrize("offset", [0x03A, 0x03D, 0x182, 0x1E3, 0x1F4], ids=hex)
def test_tcb_reserved_bytes_must_be_zero(offset: int) -> None:
    with pytest.raises(ReservedFieldSet, match="reserved bytes 2-5"):
        AttestationReport.from_bytes(patched(MILAN_REPORT, offset, b"\x01"))


def test_policy_reserved_bits() -> None:
    with pytest.raises(ReservedFieldSet, match="bit 17 must be one"):
        AttestationReport.from_bytes(patched(MILAN_REPORT, 0x08, struct.pack("<Q", 0x10000)))
    with pytest.raises(ReservedFieldSet, match="bits 26-63"):
        AttestationReport.from_bytes(patched(MILAN_REPORT, 0x08, struct.pack("<Q", 0x30000 | 1 << 26)))


def test_key_info_reserved_values() -> None:
    with pytest.raises(ReservedFieldSet, match="bits 5-31"):
        AttestationReport.from_bytes(patched(MILAN_REPORT, 0x48, struct.pack("<I", 1 << 5)))
    with pytest.raises(ReservedFieldSet, match="SIGNING_KEY 3 is a reserved value"):
        AttestationReport.from_bytes(patched(MILAN_REPORT, 0x48, struct.pack("<I", 3 << 2)))
    vlek = AttestationReport.from_bytes(patched(MILAN_REPORT, 0x48, struct.pack("<I", 1 << 2 | 0b11)))
    assert (vlek.signing_key, vlek.author_key_en, vlek.mask_chip_key) == (SigningKey.VLEK, True, True)


def test_errors_are_security_violations() -> None:
    with pytest.raises(SecurityViolation) as caught:
        AttestationReport.from_bytes(b"")
    assert isinstance(caught.value, ReportFormatError)
    assert caught.value.exit_code == 3


def test_version_3_carries_cpuid() -> None:
    milan = AttestationReport.from_bytes(MILAN_REPORT)
    v3 = dataclasses.replace(milan, version=3, cpuid=Cpuid(family=0x19, model=0x11, stepping=0x01))
    data = v3.to_bytes()
    assert data[0x188:0x18B] == bytes([0x19, 0x11, 0x01])
    assert AttestationReport.from_bytes(data) == v3
    assert AttestationReport.from_bytes(data).to_bytes() == data
    # Bytes after the CPUID fields stay reserved in version 3.
    with pytest.raises(ReservedFieldSet):
        AttestationReport.from_bytes(patched(data, 0x18B, b"\x01"))


def test_version_3_from_another_processor_family_is_refused() -> None:
    milan = AttestationReport.from_bytes(MILAN_REPORT)
    v3 = dataclasses.replace(milan, version=3, cpuid=Cpuid(family=0x19, model=1, stepping=1)).to_bytes()
    with pytest.raises(UnsupportedProcessor, match="CPUID family 0x1a"):
        AttestationReport.from_bytes(patched(v3, 0x188, b"\x1a"))


def test_building_a_report_checks_fields() -> None:
    milan = AttestationReport.from_bytes(MILAN_REPORT)
    with pytest.raises(FieldValueError, match="MEASUREMENT must be 48 bytes"):
        dataclasses.replace(milan, measurement=bytes(47))
    with pytest.raises(FieldValueError, match="CPUID"):
        dataclasses.replace(milan, cpuid=Cpuid(family=0x19, model=1, stepping=1))
    with pytest.raises(FieldValueError, match="VMPL"):
        dataclasses.replace(milan, vmpl=-1)
    with pytest.raises(FieldValueError, match="TCB snp SVN"):
        TcbVersion(bootloader=0, tee=0, snp=256, microcode=0)
    # Building mistakes are the caller's, not the evidence's.
    assert issubclass(FieldValueError, ConfigurationError)


def test_guest_policy_build() -> None:
    policy = GuestPolicy.build(debug=True, migrate_ma=True, abi_major=1, abi_minor=51)
    assert policy.debug and policy.migrate_ma and policy.flag("smt")
    assert (policy.abi_major, policy.abi_minor) == (1, 51)
    assert GuestPolicy.build().value == 0x30000


def test_tcb_comparison_names_the_lower_components() -> None:
    tcb = TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
    assert tcb.components_below(TcbVersion(bootloader=3, tee=1, snp=8, microcode=200)) == ["tee", "microcode"]
    assert tcb.components_below(tcb) == []


mutations = st.lists(st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(0, 255)), min_size=1, max_size=8)


@settings(max_examples=400)
@given(mutations=mutations, cut=st.integers(0, REPORT_SIZE + 16))
def test_fuzzed_reports_parse_exactly_or_raise_the_parsers_error(mutations: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(MILAN_REPORT)
    for offset, value in mutations:
        data[offset] = value
    candidate = bytes(data + bytes(16))[:cut] if cut != REPORT_SIZE else bytes(data)
    try:
        report = AttestationReport.from_bytes(candidate)
    except ReportFormatError:
        return
    assert report.to_bytes() == candidate
