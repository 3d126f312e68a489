"""The simulated H100 and the GPU nonce: its reports verify only under its configured root, only for the runtime
data the nonce was derived from, and are reported as simulated."""

from __future__ import annotations

from pathlib import Path

import pytest

from securetrain.core.nvidia.binding import gpu_nonce
from securetrain.core.nvidia.certs import UntrustedGpuRoot
from securetrain.core.nvidia.roots import NVIDIA_DEVICE_ROOTS
from securetrain.core.nvidia.verifier import GpuNonceMismatch, verify_gpu_report
from securetrain.localstack.platform.simulated_gpu import SimulatedH100


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> SimulatedH100:
    return SimulatedH100.load_or_create(tmp_path_factory.mktemp("gpu") / "h100")


def test_gpu_nonce_is_bound_to_the_runtime_data() -> None:
    runtime = b'{"keys":[],"nonce":"job-1"}'
    assert gpu_nonce(runtime) == gpu_nonce(runtime)
    assert len(gpu_nonce(runtime)) == 32
    assert gpu_nonce(runtime) != gpu_nonce(b'{"keys":[],"nonce":"job-2"}')


def test_simulated_report_verifies_under_its_root_for_its_runtime_data(gpu: SimulatedH100) -> None:
    runtime = b'{"nonce":"job-1"}'
    evidence = gpu.report(gpu_nonce(runtime))
    verified = verify_gpu_report(evidence.report, evidence.chain, [gpu.root], expected_nonce=gpu_nonce(runtime))
    assert verified.simulated
    assert "SIMULATED" in evidence.chain.leaf.subject.rfc4514_string()
    assert verified.report.response.measurements() == {block.index: block.value for block in gpu.measurements()}


def test_simulated_report_for_other_runtime_data_is_refused(gpu: SimulatedH100) -> None:
    evidence = gpu.report(gpu_nonce(b'{"nonce":"job-1"}'))
    with pytest.raises(GpuNonceMismatch):
        verify_gpu_report(evidence.report, evidence.chain, [gpu.root], expected_nonce=gpu_nonce(b'{"nonce":"job-2"}'))


def test_simulated_root_is_not_trusted_by_default(gpu: SimulatedH100) -> None:
    nonce = gpu_nonce(b"{}")
    evidence = gpu.report(nonce)
    with pytest.raises(UntrustedGpuRoot):
        verify_gpu_report(evidence.report, evidence.chain, NVIDIA_DEVICE_ROOTS, expected_nonce=nonce)


def test_state_directory_keeps_the_same_gpu(gpu: SimulatedH100, tmp_path: Path) -> None:
    first = SimulatedH100.load_or_create(tmp_path / "h100")
    again = SimulatedH100.load_or_create(tmp_path / "h100")
    assert first.root == again.root
    assert first.root != gpu.root
    assert (tmp_path / "h100" / "leaf.key").stat().st_mode & 0o077 == 0
