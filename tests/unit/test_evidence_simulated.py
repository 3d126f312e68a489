"""The simulated SEV-SNP evidence provider: reports the real verifier accepts, bound to what was asked."""

from __future__ import annotations

import importlib.metadata
import platform
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.localstack.platform.local_cvm import LAUNCH_MEASUREMENT
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.core.cli import main
from securetrain.core.snp.certs import CertificateChain
from securetrain.core.snp.verifier import verify_report
from securetrain.localstack.platform.simulated_evidence import SimulatedSnpProvider
from securetrain.tee.evidence import EvidenceError
from securetrain.core.audit.checkpoints import public_key_pem
from securetrain.core.signed_documents import key_id, load_public_key
from securetrain.tee.data_owners import OWNER_KEY
from securetrain.tee.workload import host_data, manifest
from tests.agent_process import source_copy


@pytest.fixture(scope="module")
def platform_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("snp-platform")


@pytest.fixture(scope="module")
def owner_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("owner") / "owner.pem"
    path.write_bytes(public_key_pem(Ed25519PrivateKey.generate()))
    return path


@pytest.fixture(scope="module")
def owner_ids(owner_key_file: Path) -> list[str]:
    return [key_id(load_public_key(owner_key_file, OWNER_KEY))]


@pytest.fixture(scope="module")
def provider(platform_dir: Path, owner_ids: list[str]) -> SimulatedSnpProvider:
    return SimulatedSnpProvider(platform_dir, owner_ids)


def test_report_carries_report_data_measurement_and_host_data(provider, platform_dir, owner_ids) -> None:
    report_data = bytes(range(64))
    evidence = provider.report(report_data)
    root = SimulatedSnpPlatform.load_or_create(platform_dir).root
    verified = verify_report(evidence.report, CertificateChain.from_pem_bundle(evidence.vcek_chain_pem), [root])
    assert verified.simulated
    assert verified.report.report_data == report_data
    assert verified.report.measurement == LAUNCH_MEASUREMENT
    assert verified.report.host_data == host_data(owner_ids)
    assert provider.tee_type == "sev-snp-simulated"


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_of_the_wrong_size_is_refused(provider, size: int) -> None:
    with pytest.raises(EvidenceError, match="64 bytes"):
        provider.report(bytes(size))


@pytest.mark.parametrize("file", ["tee/attest.py", "core/sealed/stream.py", "core/skr.py", "__init__.py"])
def test_one_changed_byte_of_code_the_tee_runs_changes_host_data(tmp_path: Path, file: str) -> None:
    """The TEE zone, the core it imports (the decryption in sealed/stream.py among it) and the package root."""
    copy = source_copy(tmp_path)
    assert host_data(source=copy) == host_data()
    source = copy / file
    content = bytearray(source.read_bytes())
    content[-2] ^= 0x01
    source.write_bytes(bytes(content))
    assert host_data(source=copy) != host_data()


@pytest.mark.parametrize("file", ["airflow/training.py", "localstack/demo.py"])
def test_code_that_never_runs_in_the_tee_is_not_measured(tmp_path: Path, file: str) -> None:
    copy = source_copy(tmp_path)
    (copy / file).write_text((copy / file).read_text() + "# outside the TEE\n")
    assert host_data(source=copy) == host_data()


def test_the_measurement_names_the_dependency_set_python_and_trusted_owners(owner_ids) -> None:
    measured = manifest(owner_ids)
    torch_entry = measured["distributions"]["torch"]
    assert torch_entry["version"] == importlib.metadata.version("torch")
    assert re.fullmatch(r"[0-9a-f]{64}", torch_entry["record_sha256"])
    assert "securetrain" not in measured["distributions"]  # measured by its files instead
    assert measured["python"]["version"] == platform.python_version()
    assert measured["configuration"]["data_owner_keys"] == owner_ids
    assert host_data(owner_ids) != host_data() != host_data(["0" * 64])


def test_cvm_measure_prints_the_host_data_the_provider_reports(provider, owner_key_file, capsys) -> None:
    assert main(["cvm", "measure", "--data-owner-key", str(owner_key_file)]) == 0
    assert capsys.readouterr().out.strip() == provider.host_data.hex()
    assert main(["cvm", "measure", "--manifest"]) == 0
    assert '"contracts/job_spec.py"' in capsys.readouterr().out


def test_cvm_measure_refuses_a_directory_that_is_no_securetrain_package(tmp_path: Path, capsys) -> None:
    assert main(["cvm", "measure", "--source-dir", str(tmp_path)]) == 2
    assert "not a securetrain package directory" in capsys.readouterr().err
