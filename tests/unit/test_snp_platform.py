"""The simulated SNP platform: a persisted chain of its own and byte-exact reports the real verifier checks."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from securetrain.localstack.platform.snp_platform import SIMULATION_ORGANIZATION, SimulatedSnpPlatform
from securetrain.core.errors import ConfigurationError
from securetrain.core.snp.certs import CertificateChain, UntrustedRoot
from securetrain.core.snp.report import AttestationReport, FieldValueError, GuestPolicy, SigningKey, TcbVersion
from securetrain.core.snp.roots import AMD_ROOTS
from securetrain.core.snp.verifier import verify_report

TCB = TcbVersion(bootloader=4, tee=1, snp=22, microcode=213)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("snp") / "platform"


@pytest.fixture(scope="module")
def platform(state_dir: Path) -> SimulatedSnpPlatform:
    return SimulatedSnpPlatform.load_or_create(state_dir)


def test_state_is_persisted_with_private_keys_owner_only(platform: SimulatedSnpPlatform, state_dir: Path) -> None:
    platform.certificate_chain(TCB)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    keys = sorted(state_dir.glob("*.key"))
    assert {"ark.key", "ask.key", f"vcek-{TCB.to_bytes().hex()}.key"} <= {k.name for k in keys}
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    again = SimulatedSnpPlatform.load_or_create(state_dir)
    assert again.root == platform.root
    assert again.chip_id == platform.chip_id
    assert again.certificate_chain(TCB) == platform.certificate_chain(TCB)


def test_report_is_byte_exact_and_verifies(platform: SimulatedSnpPlatform) -> None:
    evidence = platform.report(
        report_data=b"\x01" * 64,
        measurement=b"\x02" * 48,
        host_data=b"\x03" * 32,
        vmpl=1,
        tcb=TCB,
        guest_svn=7,
        family_id=b"\x04" * 16,
        image_id=b"\x05" * 16,
    )
    report = AttestationReport.from_bytes(evidence.report)
    assert report.to_bytes() == evidence.report
    assert (report.report_data, report.measurement, report.host_data) == (b"\x01" * 64, b"\x02" * 48, b"\x03" * 32)
    assert (report.vmpl, report.guest_svn, report.family_id, report.image_id) == (1, 7, b"\x04" * 16, b"\x05" * 16)
    assert report.reported_tcb == report.current_tcb == report.committed_tcb == report.launch_tcb == TCB
    assert report.version == 3 and report.cpuid is not None and report.cpuid.family == 0x19
    assert report.signing_key is SigningKey.VCEK and report.chip_id == platform.chip_id
    assert not report.policy.debug and not report.migration_agent_bound
    verified = verify_report(evidence.report, evidence.chain, [platform.root])
    assert verified.simulated
    assert evidence.chain.vcek.amd_tcb() == TCB
    assert evidence.chain.vcek.amd_hw_id() == platform.chip_id


def test_debug_policy_is_written(platform: SimulatedSnpPlatform) -> None:
    evidence = platform.report(
        report_data=bytes(64), measurement=bytes(48), host_data=bytes(32), policy=GuestPolicy.build(debug=True)
    )
    assert AttestationReport.from_bytes(evidence.report).policy.debug


def test_each_tcb_gets_its_own_vcek(platform: SimulatedSnpPlatform) -> None:
    first = platform.certificate_chain(TCB)
    other = platform.certificate_chain(TcbVersion(bootloader=4, tee=1, snp=23, microcode=213))
    assert first.vcek.der != other.vcek.der
    assert first.ask == other.ask and first.ark == other.ark
    assert other.vcek.amd_tcb().snp == 23


def test_every_certificate_says_simulated(platform: SimulatedSnpPlatform) -> None:
    chain = platform.certificate_chain(TCB)
    for certificate in (chain.vcek, chain.ask, chain.ark):
        assert "(SIMULATED)" in certificate.subject_name
        assert SIMULATION_ORGANIZATION in certificate.subject_name
    assert platform.root.simulated


def test_not_trusted_by_default(platform: SimulatedSnpPlatform) -> None:
    evidence = platform.report(report_data=bytes(64), measurement=bytes(48), host_data=bytes(32))
    with pytest.raises(UntrustedRoot, match="ARK-Simulated"):
        verify_report(evidence.report, evidence.chain, AMD_ROOTS)


def test_chain_pem_is_what_azure_calls_vcek_cert_chain(platform: SimulatedSnpPlatform) -> None:
    evidence = platform.report(report_data=bytes(64), measurement=bytes(48), host_data=bytes(32))
    assert CertificateChain.from_pem_bundle(evidence.vcek_chain_pem) == evidence.chain


def test_wrong_field_sizes_are_refused(platform: SimulatedSnpPlatform) -> None:
    with pytest.raises(FieldValueError, match="REPORT_DATA must be 64 bytes"):
        platform.report(report_data=bytes(32), measurement=bytes(48), host_data=bytes(32))


def test_incomplete_or_inconsistent_state_is_refused(tmp_path: Path, state_dir: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "ark.pem").write_bytes((state_dir / "ark.pem").read_bytes())
    with pytest.raises(ConfigurationError, match=r"incomplete .*missing ark\.key, ask\.key, ask\.pem, chip_id\.hex"):
        SimulatedSnpPlatform.load_or_create(partial)
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for name in ("ark.key", "ark.pem", "ask.key", "ask.pem", "chip_id.hex"):
        (swapped / name).write_bytes((state_dir / name).read_bytes())
    (swapped / "ark.key").write_bytes((state_dir / "ask.key").read_bytes())
    with pytest.raises(ConfigurationError, match=r"ark\.key does not match .*ark\.pem"):
        SimulatedSnpPlatform.load_or_create(swapped)
