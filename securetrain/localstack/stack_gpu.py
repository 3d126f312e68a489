"""Whether the local CVM has a GPU: the stack's ``gpu`` option (``none``, the default, or ``simulated``).

``securetrain stack up --gpu simulated`` (or ``$SECURETRAIN_STACK_GPU``) gives the local CVM the simulated H100
(:mod:`securetrain.localstack.platform.simulated_gpu`, its keys in ``<state>/simulated-gpu``) and makes the TEE
require it: ``up`` writes the TEE's GPU requirement (:class:`securetrain.tee.gpu_attestation.GpuRequirement`:
the simulated provider, the attestation stand-in as GPU attestation service and token issuer, measurements
required) to ``<state>/run/gpu.json`` before any service starts, so that

- the workload's HOST_DATA (:func:`securetrain.localstack.data_owner.stack_host_data`), and with it the approved
  attestation and release policies written on the first ``up``, measure that requirement;
- the attestation stand-in trusts the simulated GPU's root and compares its measurements with the simulated
  GPU's stated ones (:func:`gpu_service_arguments`);
- the TEE's agent is started with the same requirement (:func:`gpu_tee_environment`).

``down`` removes the file; a later ``up`` without a choice keeps the GPU of the stack that runs. A stack without a
GPU starts and measures exactly as before the option existed, apart from the manifest's ``gpu`` entry.
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from securetrain.localstack.errors import StackConfigurationError
from securetrain.localstack.layout import StackLayout, write_file
from securetrain.localstack.platform.simulated_gpu import SimulatedH100
from securetrain.tee.gpu_attestation import GpuRequirement, default_token_jwks

GPU_ENV = "SECURETRAIN_STACK_GPU"


class StackGpu(enum.Enum):
    """The GPU the local CVM has, by its name on the command line."""

    NONE = "none"
    SIMULATED = "simulated"

    @classmethod
    def named(cls, name: str, source: str) -> StackGpu:
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(gpu.value for gpu in cls)
            raise StackConfigurationError(f"{source} is {name!r}: the stack's GPU is one of {choices}") from None


def requirement_file(layout: StackLayout) -> Path:
    """The TEE's GPU requirement while a stack with a GPU runs: written by ``up``, removed by ``down``."""
    return layout.root / "run" / "gpu.json"


def gpu_dir(layout: StackLayout) -> Path:
    """The simulated H100's keys and certificates."""
    return layout.root / "simulated-gpu"


def chosen_gpu(layout: StackLayout, explicit: StackGpu | None) -> StackGpu:
    """``explicit`` if given, else ``$SECURETRAIN_STACK_GPU``, else the GPU of the stack that runs, else none."""
    if explicit is not None:
        return explicit
    if os.environ.get(GPU_ENV):
        return StackGpu.named(os.environ[GPU_ENV], GPU_ENV)
    return StackGpu.SIMULATED if requirement_file(layout).exists() else StackGpu.NONE


def write_requirement(layout: StackLayout, gpu: StackGpu, attestation_url: str | None) -> None:
    """Record the TEE's GPU requirement for a stack with ``gpu`` whose attestation stand-in is at ``attestation_url``
    (None: the stack runs none)."""
    if gpu is StackGpu.NONE:
        requirement_file(layout).unlink(missing_ok=True)
        return
    if attestation_url is None:
        raise StackConfigurationError("a stack with a GPU needs the attestation service, which appraises the GPU")
    SimulatedH100.load_or_create(gpu_dir(layout))
    requirement = GpuRequirement(gpu.value, attestation_url, attestation_url, default_token_jwks(attestation_url),
                                 require_measurements=True)  # fmt: skip
    write_file(requirement_file(layout), json.dumps(requirement.measured(), sort_keys=True).encode(), mode=0o600)


def stack_gpu_requirement(layout: StackLayout) -> GpuRequirement | None:
    """The GPU requirement of the stack that runs in ``layout``; None without a GPU."""
    try:
        document = json.loads(requirement_file(layout).read_text())
        return GpuRequirement(**document)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise StackConfigurationError(f"the stack's GPU requirement {requirement_file(layout)} is unreadable: {exc}") from None


def gpu_configuration(layout: StackLayout) -> dict[str, Any] | None:
    """The stack TEE's GPU requirement as its workload manifest measures it (None: no GPU)."""
    requirement = stack_gpu_requirement(layout)
    return None if requirement is None else requirement.measured()


def gpu_service_arguments(layout: StackLayout, data_dir: Path) -> list[str]:
    """The attestation stand-in's GPU options: trust the simulated H100's root, require its stated measurements."""
    if stack_gpu_requirement(layout) is None:
        return []
    gpu = SimulatedH100.load_or_create(gpu_dir(layout))
    root, reference = data_dir / "simulated-gpu-root.pem", data_dir / "simulated-gpu-reference.json"
    write_file(root, gpu.chain.certificates[-1].public_bytes(Encoding.PEM), mode=0o644)
    measurements = {str(block.index): [block.value.hex()] for block in gpu.measurements()}
    write_file(reference, json.dumps({"source": "the simulated H100's stated measurements",
                                      "measurements": measurements}).encode(), mode=0o644)  # fmt: skip
    return ["--trust-gpu-root", str(root), "--gpu-reference", str(reference)]


def gpu_tee_environment(layout: StackLayout) -> dict[str, str]:
    """The TEE agent's GPU settings (:class:`securetrain.tee.settings.GpuSettings`) on this stack."""
    requirement = stack_gpu_requirement(layout)
    if requirement is None:
        return {}
    return {
        "SECURETRAIN_GPU": requirement.provider,
        "SECURETRAIN_GPU_DIR": str(gpu_dir(layout)),
        "SECURETRAIN_GPU_ATTESTATION_ENDPOINT": requirement.attestation_endpoint,
        "SECURETRAIN_GPU_TOKEN_ISSUER": requirement.token_issuer,
        "SECURETRAIN_GPU_TOKEN_JWKS": requirement.token_jwks,
        "SECURETRAIN_GPU_REQUIRE_MEASUREMENTS": "true" if requirement.require_measurements else "false",
    }
