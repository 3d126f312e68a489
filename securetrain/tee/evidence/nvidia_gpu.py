"""Evidence from the TEE's NVIDIA H100 in confidential-computing mode, collected with NVIDIA's NVML.

The GPU's attestation report answers a nonce the TEE chooses; the TEE asks for
:func:`securetrain.core.nvidia.binding.gpu_nonce` of the runtime data its CPU evidence binds, so the GPU report
is fresh for, and tied to, this TEE's keys and job (docs/attestation.md, "GPU evidence").

:class:`NvmlGpuProvider` uses NVIDIA's maintained Python bindings (``nvidia-ml-py``, module ``pynvml``; the
``gpu`` extra), imported only when a GPU provider is made, so a TEE without a GPU never loads them. Before asking
for a report it checks, as NVIDIA's local verifier does (github.com/NVIDIA/nvtrust, ``verifier/nvml``), that the
system's confidential-computing feature is on, in the production environment and without developer tools:
anything else means the GPU's memory is not protected, and no evidence is produced. It then reads the report
(``nvmlDeviceGetConfComputeGpuAttestationReport``) and the device certificate chain
(``nvmlDeviceGetConfComputeGpuCertificate``), and checks that the report answers the nonce asked.

Verification is not done here but where evidence is appraised (:mod:`securetrain.core.nvidia.verifier`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from securetrain.core.nvidia.binding import gpu_nonce
from securetrain.core.nvidia.errors import GpuEvidenceError
from securetrain.core.nvidia.spdm import GpuAttestationReport
from securetrain.tee.evidence.base import EvidenceError, EvidenceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuEvidence:
    """A GPU attestation report (SPDM request + signed response) and its device chain (PEM, leaf first)."""

    report: bytes
    certificate_chain_pem: bytes


class GpuEvidenceProvider(Protocol):
    """A source of GPU evidence for this TEE."""

    @property
    def gpu_type(self) -> str:
        """What the evidence comes from: ``nvidia-h100-cc`` or ``nvidia-h100-simulated``."""
        ...

    def gpu_evidence(self, runtime_data: bytes) -> GpuEvidence:
        """A fresh report for the nonce derived from ``runtime_data`` (what the CPU evidence binds)."""
        ...


class NvmlGpuProvider:
    """Evidence from GPU ``device_index`` through NVML; :class:`EvidenceUnavailable` where there is none."""

    gpu_type = "nvidia-h100-cc"

    def __init__(self, device_index: int = 0) -> None:
        try:
            import pynvml
        except ImportError:
            raise EvidenceUnavailable(
                "GPU evidence needs NVIDIA's NVML bindings: install securetrain with the 'gpu' extra (nvidia-ml-py)"
            ) from None
        self._nvml: Any = pynvml
        self._device_index = device_index

    def gpu_evidence(self, runtime_data: bytes) -> GpuEvidence:
        nvml = self._nvml
        nonce = gpu_nonce(runtime_data)
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise EvidenceUnavailable(f"NVML cannot start (no NVIDIA driver or GPU?): {exc}") from None
        try:
            self._check_confidential_computing()
            handle = nvml.nvmlDeviceGetHandleByIndex(self._device_index)
            report_struct = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            chain_struct = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
        except nvml.NVMLError as exc:
            raise EvidenceUnavailable(f"GPU {self._device_index} gave no attestation evidence: {exc}") from None
        finally:
            nvml.nvmlShutdown()
        report = bytes(report_struct.attestationReport[: report_struct.attestationReportSize])
        chain = bytes(chain_struct.attestationCertChain[: chain_struct.attestationCertChainSize])
        try:
            answered = GpuAttestationReport.from_bytes(report).nonce
        except GpuEvidenceError as exc:
            raise EvidenceError(f"GPU {self._device_index} returned a malformed attestation report: {exc}") from None
        if answered != nonce:
            raise EvidenceError(f"GPU {self._device_index} answered another nonce than the one asked")
        log.info("GPU %d attestation report collected (%d bytes)", self._device_index, len(report))
        return GpuEvidence(report, chain)

    def _check_confidential_computing(self) -> None:
        nvml = self._nvml
        state = nvml.nvmlSystemGetConfComputeState()
        if state.ccFeature != nvml.NVML_CC_SYSTEM_FEATURE_ENABLED:
            raise EvidenceUnavailable("the GPU's confidential-computing mode is off: its memory is not protected")
        if state.environment != nvml.NVML_CC_SYSTEM_ENVIRONMENT_PROD:
            raise EvidenceUnavailable("the GPU's confidential-computing environment is not production")
        if state.devToolsMode != nvml.NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF:
            raise EvidenceUnavailable("the GPU is in confidential-computing developer-tools mode (debuggable)")
