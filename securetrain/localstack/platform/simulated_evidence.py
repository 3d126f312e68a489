"""The local stack's evidence: reports from the simulated SEV-SNP platform (securetrain.localstack.platform.snp_platform).

The local CVM is a process, so nothing measures it; the provider states what a real launch would have
measured: the simulated image's launch MEASUREMENT (:data:`securetrain.localstack.platform.local_cvm.LAUNCH_MEASUREMENT`) and,
as HOST_DATA, the digest of the workload that is running now (:func:`securetrain.tee.workload.host_data`: its
code, dependencies and the data owner keys it trusts), computed when the provider is made. A changed trainer therefore reports another HOST_DATA, and a release
policy that pins the approved one refuses it. Tokens earned with this evidence say they came from a
simulated platform.

GPU evidence on the local stack comes from the simulated H100
(:mod:`securetrain.localstack.platform.simulated_gpu`) through :class:`SimulatedGpuProvider`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from securetrain.core.nvidia.binding import gpu_nonce
from securetrain.localstack.platform.local_cvm import LAUNCH_MEASUREMENT
from securetrain.localstack.platform.simulated_gpu import SimulatedH100
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.tee.evidence.base import Evidence, check_report_data
from securetrain.tee.evidence.nvidia_gpu import GpuEvidence
from securetrain.tee.gpu_attestation import SIMULATED_GPU_TYPE
from securetrain.tee.workload import host_data

log = logging.getLogger(__name__)


class SimulatedSnpProvider:
    """Evidence signed by the simulated platform kept in ``platform_dir`` (the stack's ``snp-platform/``)."""

    tee_type = "sev-snp-simulated"

    def __init__(
        self, platform_dir: Path, data_owner_key_ids: Sequence[str], gpu: Mapping[str, Any] | None = None
    ) -> None:
        self._platform = SimulatedSnpPlatform.load_or_create(platform_dir)
        self.host_data = host_data(data_owner_key_ids, gpu=gpu)
        log.info("simulated SEV-SNP evidence provider: HOST_DATA %s", self.host_data.hex())

    def report(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        evidence = self._platform.report(
            report_data=report_data, measurement=LAUNCH_MEASUREMENT, host_data=self.host_data
        )
        return Evidence(evidence.report, evidence.vcek_chain_pem)


class SimulatedGpuProvider:
    """GPU evidence signed by the simulated H100 kept in ``gpu_dir``, for the nonce bound to the runtime data."""

    gpu_type = SIMULATED_GPU_TYPE

    def __init__(self, gpu_dir: Path) -> None:
        self._gpu = SimulatedH100.load_or_create(gpu_dir)

    def gpu_evidence(self, runtime_data: bytes) -> GpuEvidence:
        evidence = self._gpu.report(gpu_nonce(runtime_data))
        return GpuEvidence(evidence.report, evidence.chain.to_pem())
