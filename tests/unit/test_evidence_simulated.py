"""The simulated SEV-SNP evidence provider: reports the real verifier accepts, bound to what was asked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import trainer
from emulators.local_cvm import LAUNCH_MEASUREMENT
from emulators.snp_platform import SimulatedSnpPlatform
from securetrain.cli import main
from securetrain.snp.certs import CertificateChain
from securetrain.snp.verifier import verify_report
from trainer.evidence import EvidenceError, SimulatedSnpProvider
from trainer.workload import host_data


@pytest.fixture(scope="module")
def platform_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("snp-platform")


@pytest.fixture(scope="module")
def provider(platform_dir: Path) -> SimulatedSnpProvider:
    return SimulatedSnpProvider(platform_dir)


def test_report_carries_report_data_measurement_and_host_data(provider, platform_dir) -> None:
    report_data = bytes(range(64))
    evidence = provider.report(report_data)
    root = SimulatedSnpPlatform.load_or_create(platform_dir).root
    verified = verify_report(evidence.report, CertificateChain.from_pem_bundle(evidence.vcek_chain_pem), [root])
    assert verified.simulated
    assert verified.report.report_data == report_data
    assert verified.report.measurement == LAUNCH_MEASUREMENT
    assert verified.report.host_data == host_data()
    assert provider.tee_type == "sev-snp-simulated"


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_of_the_wrong_size_is_refused(provider, size: int) -> None:
    with pytest.raises(EvidenceError, match="64 bytes"):
        provider.report(bytes(size))


def test_one_changed_byte_of_trainer_code_changes_host_data(tmp_path: Path) -> None:
    copy = tmp_path / "trainer"
    shutil.copytree(Path(trainer.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert host_data(copy) == host_data()
    source = copy / "attest.py"
    content = bytearray(source.read_bytes())
    content[-2] ^= 0x01
    source.write_bytes(bytes(content))
    assert host_data(copy) != host_data()


def test_cvm_measure_prints_the_host_data_the_provider_reports(provider, capsys) -> None:
    assert main(["cvm", "measure"]) == 0
    assert capsys.readouterr().out.strip() == provider.host_data.hex()
    assert main(["cvm", "measure", "--manifest"]) == 0
    assert '"job_spec.py"' in capsys.readouterr().out


def test_cvm_measure_refuses_a_directory_that_is_no_trainer(tmp_path: Path, capsys) -> None:
    assert main(["cvm", "measure", "--trainer-dir", str(tmp_path)]) == 2
    assert "not a trainer package" in capsys.readouterr().err
