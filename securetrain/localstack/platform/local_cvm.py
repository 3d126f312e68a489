"""The local confidential VM: its launch measurement and ``python -m securetrain.localstack.platform.local_cvm``.

On Azure, MEASUREMENT is the digest of the guest's initial memory (firmware, and with it the kernel
and command line) that AMD's secure processor computes at launch. The local CVM is a process, not a
VM, so its simulated image has a fixed measurement, published here as the reference value the local
attestation policy allows. The workload itself is measured for real, into HOST_DATA (securetrain.tee.workload).

Run as a module, it starts the TEE's agent (securetrain.tee.agent) with one more evidence provider,
``simulated`` (``SECURETRAIN_EVIDENCE_PROVIDER=simulated``): the simulated SEV-SNP chip, its state in
``$SECURETRAIN_SNP_PLATFORM_DIR``; and one more GPU provider, ``simulated`` (``SECURETRAIN_GPU=simulated``): the
simulated H100, its state in ``$SECURETRAIN_GPU_DIR``. On the emulated Azure CVM the agent uses the production ``azure-cvm`` provider.
Either way the agent's code is the production code; only the hardware underneath is simulated.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

LAUNCH_MEASUREMENT = hashlib.sha384(b"securetrain local CVM image v1: simulated firmware, kernel and initrd").digest()


def main(argv: list[str] | None = None) -> int:
    from securetrain.localstack.platform.simulated_evidence import SimulatedSnpProvider  # noqa: PLC0415 - imports this module
    from securetrain.localstack.platform.simulated_evidence import SimulatedGpuProvider  # noqa: PLC0415
    from securetrain.tee.agent.__main__ import HARDWARE_GPU_PROVIDERS, HARDWARE_PROVIDERS, main as agent_main  # noqa: PLC0415

    def simulated(settings, owners):  # noqa: ANN001, ANN202 - the agent's provider factory signature
        return SimulatedSnpProvider(
            Path(os.environ["SECURETRAIN_SNP_PLATFORM_DIR"]), owners.key_ids, settings.gpu_configuration()
        )

    def simulated_gpu(settings):  # noqa: ANN001, ANN202 - the agent's GPU provider factory signature
        return SimulatedGpuProvider(Path(os.environ["SECURETRAIN_GPU_DIR"]))

    return agent_main(
        argv, {"simulated": simulated, **HARDWARE_PROVIDERS}, {"simulated": simulated_gpu, **HARDWARE_GPU_PROVIDERS}
    )


if __name__ == "__main__":
    sys.exit(main())
