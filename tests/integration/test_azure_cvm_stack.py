"""``securetrain stack up --platform azure-cvm``: the local CVM on the emulated Azure confidential VM.

The stack runs the vTPM (swtpm behind the paravisor) and the IMDS stand-in, the agent is configured by its settings
alone to read its evidence through them with the production Azure CVM provider, and ``down`` leaves no swtpm behind.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.azure_cvm.verifier import verify_cvm_evidence
from securetrain.core.cli import main
from securetrain.localstack import StackConfig, down, read_stack_env
from securetrain.localstack.data_owner import public_key_path, stack_host_data
from securetrain.localstack.emulated_platform import DEFAULT_PLATFORM, EmulatedPlatform
from securetrain.localstack.errors import StackConfigurationError
from securetrain.localstack.platform.measured_boot import WORKLOAD_PCR
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.process import PidRecord, ProcessIdentity
from securetrain.localstack.registry import ALL_SERVICES
from securetrain.tee.agent.__main__ import HARDWARE_PROVIDERS, evidence_provider
from securetrain.tee.data_owners import DataOwnerKeys
from securetrain.tee.settings import TeeSettings
from tests.conftest import LocalStack, _config_with_free_ports, process_environment

pytestmark = pytest.mark.integration

USER_DATA = hashlib.sha256(b"a TEE key").digest() + bytes(32)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = _config_with_free_ports(tmp_path_factory.mktemp("azure-cvm") / "state", platform=EmulatedPlatform.AZURE_CVM)
    ports = [option for name, port in config.ports.items() for option in ("--port", f"{name}={port}")]
    try:
        assert main(["stack", "up", "--state-dir", str(config.layout.root), "--platform", "azure-cvm", *ports]) == 0
        yield LocalStack(config, read_stack_env(config.layout.env_file))
    finally:
        down(config)


def test_up_runs_the_vtpm_imds_and_the_agent_on_the_azure_cvm_provider(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.env["SECURETRAIN_PLATFORM"] == "azure-cvm"
    capsys.readouterr()
    assert main(["stack", "status", "--state-dir", str(stack.state_dir)]) == 0
    printed = capsys.readouterr().out
    assert "platform: azure-cvm, the emulated Azure confidential VM" in printed
    assert f"vtpm         healthy pid {_pid(stack.config, 'vtpm')} tcp://127.0.0.1:{stack.config.ports['vtpm']}" in printed
    for name in ("imds", "cvm"):
        assert f"{name:<12} healthy pid {_pid(stack.config, name)} https://127.0.0.1:{stack.config.ports[name]}" in printed
    with stack.agent_client("monitor") as client:
        assert client.health().tee_type == "azure-cvm"
    environment = stack.tee_environment()
    assert environment["SECURETRAIN_EVIDENCE_PROVIDER"] == "azure-cvm"
    assert environment["SECURETRAIN_VTPM_TCTI"] == f"swtpm:host=127.0.0.1,port={stack.config.ports['vtpm']}"
    assert "SECURETRAIN_SNP_PLATFORM_DIR" not in environment


def test_the_agents_settings_give_evidence_of_the_measured_workload(stack: LocalStack) -> None:
    with process_environment(stack.tee_environment()):
        settings = TeeSettings.load()
    owners = DataOwnerKeys.from_files([public_key_path(stack.layout)])
    provider = evidence_provider(settings, owners, HARDWARE_PROVIDERS)
    nonce = secrets.token_bytes(32)
    document = provider.evidence(USER_DATA, nonce)
    root = SimulatedSnpPlatform.load_or_create(stack.layout.snp_platform_dir).root
    verified = verify_cvm_evidence(CvmEvidence.from_document({"report": {"snpCvm": document}}), nonce=nonce,
                                   trusted_roots=(root,))  # fmt: skip
    assert verified.simulated and verified.user_data == USER_DATA
    # PCR 13 holds the workload the snp platform states as HOST_DATA, extended once at boot.
    measured = hashlib.sha256(stack_host_data(stack.layout)).digest()
    assert verified.pcrs[WORKLOAD_PCR] == hashlib.sha256(bytes(32) + measured).digest()


def test_down_stops_every_process_swtpm_included(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    swtpm = ProcessIdentity(**json.loads((stack.layout.data_dir("vtpm") / "swtpm.pid").read_text()))
    running = [_record(stack.config, service.name) for service in ALL_SERVICES]
    assert swtpm.is_running() and all(record is not None for record in running)
    capsys.readouterr()
    assert main(["stack", "down", "--state-dir", str(stack.state_dir)]) == 0
    assert capsys.readouterr().out.startswith("stopped: cvm, ")
    assert not swtpm.is_running()
    assert not any(record.process.is_running() for record in running if record is not None)
    assert not stack.layout.platform_file.exists()


def _record(config: StackConfig, name: str) -> PidRecord | None:
    return PidRecord.read(config.layout.pid_file(name))


def _pid(config: StackConfig, name: str) -> int:
    record = _record(config, name)
    assert record is not None
    return record.process.pid


def test_the_platform_comes_from_the_option_then_the_environment_then_the_running_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SECURETRAIN_PLATFORM", raising=False)
    assert StackConfig.resolve(tmp_path).platform is DEFAULT_PLATFORM
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "platform").write_text("azure-cvm\n")
    assert StackConfig.resolve(tmp_path).platform is EmulatedPlatform.AZURE_CVM
    assert {service.name for service in StackConfig.resolve(tmp_path).services} >= {"vtpm", "imds", "cvm"}
    monkeypatch.setenv("SECURETRAIN_PLATFORM", "snp")
    assert StackConfig.resolve(tmp_path).platform is EmulatedPlatform.SNP
    assert StackConfig.resolve(tmp_path, platform=EmulatedPlatform.AZURE_CVM).platform is EmulatedPlatform.AZURE_CVM
    monkeypatch.setenv("SECURETRAIN_PLATFORM", "tdx")
    with pytest.raises(StackConfigurationError, match="SECURETRAIN_PLATFORM is 'tdx': the stack's platform is one of snp, azure-cvm"):
        StackConfig.resolve(tmp_path)
