"""GPU evidence providers: the simulated H100's evidence is bound to the runtime data; NVML gives none without a
confidential GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from securetrain.core.nvidia.binding import gpu_nonce
from securetrain.core.nvidia.certs import GpuCertificateChain
from securetrain.core.nvidia.verifier import GpuNonceMismatch, verify_gpu_report
from securetrain.localstack.platform.simulated_evidence import SimulatedGpuProvider
from securetrain.localstack.platform.simulated_gpu import SimulatedH100
from securetrain.tee.evidence.base import EvidenceUnavailable
from securetrain.tee.evidence.nvidia_gpu import NvmlGpuProvider


def test_simulated_gpu_evidence_answers_the_nonce_of_the_runtime_data(tmp_path: Path) -> None:
    provider = SimulatedGpuProvider(tmp_path / "h100")
    runtime = b'{"keys":[{"kid":"tee"}],"nonce":"job-1"}'
    evidence = provider.gpu_evidence(runtime)
    chain = GpuCertificateChain.from_pem(evidence.certificate_chain_pem)
    root = SimulatedH100.load_or_create(tmp_path / "h100").root
    assert verify_gpu_report(evidence.report, chain, [root], expected_nonce=gpu_nonce(runtime)).simulated
    with pytest.raises(GpuNonceMismatch):
        verify_gpu_report(evidence.report, chain, [root], expected_nonce=gpu_nonce(runtime + b" "))


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="a machine with an NVIDIA GPU may have a confidential one")
def test_nvml_gives_no_evidence_without_a_confidential_gpu() -> None:
    with pytest.raises(EvidenceUnavailable):
        NvmlGpuProvider().gpu_evidence(b"{}")
