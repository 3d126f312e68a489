"""``GET /v1/health``: the agent's TEE, its latest attestation, and the machine it runs on."""

from __future__ import annotations

from typing import Literal

from securetrain.core.contracts.base import Contract


class AttestationAge(Contract):
    """The agent's latest attestation: how old it is, when its token expires (Unix time), its number."""

    age_seconds: float
    expires_at: int
    sequence: int


class Cpu(Contract):
    #: None when the operating system does not say.
    count: int | None
    percent: float


class Memory(Contract):
    """The machine's memory, and what the agent process holds."""

    total_bytes: int
    available_bytes: int
    agent_rss_bytes: int


class Gpu(Contract):
    """The CUDA device training uses."""

    name: str
    count: int
    memory_total_bytes: int
    memory_free_bytes: int


class GpuAttestationStatus(Contract):
    """The GPU the TEE requires before any key, and what its latest attestation verified of it.

    ``verified`` is true once an attestation verified the GPU (its chain, signature, nonce and the measurements
    the TEE requires); ``cc_mode`` is ``on`` for a GPU whose confidential-computing mode NVML confirmed,
    ``simulated`` for the local stack's simulated H100, None before the first attestation; ``gpus`` names the
    verified GPUs' models (NRAS's ``hwmodel``); ``measurements`` is the service's ``measres``.
    """

    gpu_type: str
    verified: bool
    cc_mode: Literal["on", "simulated"] | None
    gpus: list[str]
    measurements: str | None


class Health(Contract):
    """The agent answers, in a TEE of ``tee_type``; ``device`` is what training uses (None while probing)."""

    status: str
    tee_type: str
    attestation: AttestationAge | None
    device: str | None
    cpu: Cpu
    memory: Memory
    #: None when there is no GPU; "probing" while the agent still looks for one.
    gpu: Gpu | Literal["probing"] | None
    #: None when the TEE requires no GPU attestation.
    gpu_attestation: GpuAttestationStatus | None = None
