"""The verifier: AMD's genuine Milan report is accepted; any change, or another chain, is refused."""

from __future__ import annotations

import datetime
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.core.snp.certs import CertificateChain, CertificateChainError, CertificateNotValidNow, UntrustedRoot
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import REPORT_SIZE, SIGNED_SIZE, TcbVersion
from securetrain.core.snp.roots import AMD_ROOTS
from securetrain.core.snp.verifier import ReportSignatureInvalid, UnsupportedSigningKey, VcekReportMismatch, verify_report

MILAN = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "amd-snp-milan"
MILAN_REPORT = bytes.fromhex(MILAN.joinpath("report.hex").read_text())
MILAN_CHAIN = CertificateChain.load(
    MILAN.joinpath("vcek.der").read_bytes(),
    MILAN.joinpath("ask.pem").read_bytes(),
    MILAN.joinpath("ark.pem").read_bytes(),
)
# Inside the Milan VCEK's validity (2023-04-03 to 2030-04-03), so these tests do not expire with it.
NOW = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnpPlatform:
    return SimulatedSnpPlatform.load_or_create(tmp_path_factory.mktemp("snp") / "platform")


def flipped(data: bytes, offset: int, mask: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def test_genuine_milan_report_is_accepted() -> None:
    verified = verify_report(MILAN_REPORT, MILAN_CHAIN, AMD_ROOTS, now=NOW)
    assert verified.root.name == "AMD ARK-Milan"
    assert not verified.simulated
    assert verified.report.measurement.hex().startswith("7a1e5c26")
    assert verified.to_dict()["simulated"] is False


def test_every_signed_byte_is_protected() -> None:
    """Change any one of the 672 signed bytes (each bit position in turn): always refused, never accepted."""
    for offset in range(SIGNED_SIZE):
        with pytest.raises(SnpEvidenceError):
            verify_report(flipped(MILAN_REPORT, offset, 1 << offset % 8), MILAN_CHAIN, AMD_ROOTS, now=NOW)


def test_every_signature_byte_is_protected() -> None:
    for offset in range(SIGNED_SIZE, REPORT_SIZE):
        with pytest.raises(SnpEvidenceError):
            verify_report(flipped(MILAN_REPORT, offset, 1 << offset % 8), MILAN_CHAIN, AMD_ROOTS, now=NOW)


def test_changed_measurement_fails_the_signature() -> None:
    with pytest.raises(ReportSignatureInvalid, match="does not verify with the VCEK"):
        verify_report(flipped(MILAN_REPORT, 0x90, 0xFF), MILAN_CHAIN, AMD_ROOTS, now=NOW)


def test_changed_reported_tcb_no_longer_matches_the_vcek() -> None:
    with pytest.raises(VcekReportMismatch, match=r"VCEK is for TCB .* but the report's REPORTED_TCB"):
        verify_report(flipped(MILAN_REPORT, 0x187, 0x01), MILAN_CHAIN, AMD_ROOTS, now=NOW)


def test_changed_chip_id_no_longer_matches_the_vcek() -> None:
    with pytest.raises(VcekReportMismatch, match="VCEK is for chip d49554ec"):
        verify_report(flipped(MILAN_REPORT, 0x1A0, 0x01), MILAN_CHAIN, AMD_ROOTS, now=NOW)


def test_masked_chip_id_must_be_zero() -> None:
    masked = MILAN_REPORT[:0x48] + struct.pack("<I", 0b10) + MILAN_REPORT[0x4C:]
    with pytest.raises(VcekReportMismatch, match="MASK_CHIP_KEY"):
        verify_report(masked, MILAN_CHAIN, AMD_ROOTS, now=NOW)


def test_vlek_signed_reports_are_refused() -> None:
    vlek = MILAN_REPORT[:0x48] + struct.pack("<I", 1 << 2) + MILAN_REPORT[0x4C:]
    with pytest.raises(UnsupportedSigningKey, match="signed by VLEK"):
        verify_report(vlek, MILAN_CHAIN, AMD_ROOTS, now=NOW)


def test_expired_chain_is_refused() -> None:
    with pytest.raises(CertificateNotValidNow, match="VCEK certificate is valid from 2023-04-03"):
        verify_report(MILAN_REPORT, MILAN_CHAIN, AMD_ROOTS, now=datetime.datetime(2030, 4, 4, tzinfo=datetime.UTC))


def test_chain_rooted_at_the_simulated_ark_is_refused(platform: SimulatedSnpPlatform) -> None:
    simulated = platform.certificate_chain(TcbVersion(bootloader=3, tee=0, snp=8, microcode=115))
    # AMD's VCEK and ASK hung under the simulated ARK, even with that ARK trusted.
    rehung = CertificateChain(MILAN_CHAIN.vcek, MILAN_CHAIN.ask, simulated.ark)
    with pytest.raises(CertificateChainError, match="ASK is issued by"):
        verify_report(MILAN_REPORT, rehung, [*AMD_ROOTS, platform.root], now=NOW)
    # The simulated platform's whole chain: not trusted by default ...
    with pytest.raises(UntrustedRoot, match="not a trusted root"):
        verify_report(MILAN_REPORT, simulated, AMD_ROOTS, now=NOW)
    # ... and when trusted, its VCEK is not the Milan chip's.
    with pytest.raises(VcekReportMismatch, match="VCEK is for chip"):
        verify_report(MILAN_REPORT, simulated, [platform.root])


def test_simulated_report_is_verified_and_marked_simulated(platform: SimulatedSnpPlatform) -> None:
    evidence = platform.report(report_data=bytes(64), measurement=bytes(48), host_data=bytes(32))
    verified = verify_report(evidence.report, evidence.chain, [platform.root])
    assert verified.simulated
    assert verified.to_dict()["root"]["simulated"] is True
    # The same evidence against AMD's roots only is refused.
    with pytest.raises(UntrustedRoot):
        verify_report(evidence.report, evidence.chain, AMD_ROOTS)


def test_report_with_the_vcek_of_another_tcb_is_refused(platform: SimulatedSnpPlatform) -> None:
    evidence = platform.report(
        report_data=bytes(64), measurement=bytes(48), host_data=bytes(32), tcb=TcbVersion(4, 0, 9, 120)
    )
    older = platform.certificate_chain(TcbVersion(3, 0, 8, 115))
    with pytest.raises(VcekReportMismatch, match="REPORTED_TCB"):
        verify_report(evidence.report, older, [platform.root])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(1, 255)), min_size=1, max_size=6))
def test_fuzzed_milan_reports_are_never_accepted(changes: list[tuple[int, int]]) -> None:
    data = bytearray(MILAN_REPORT)
    for offset, mask in changes:
        data[offset] ^= mask
    if bytes(data) == MILAN_REPORT:  # two changes cancelled out
        return
    with pytest.raises(SnpEvidenceError):
        verify_report(bytes(data), MILAN_CHAIN, AMD_ROOTS, now=NOW)
