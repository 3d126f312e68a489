"""``GET /v1/health``: the TEE, the latest attestation, and the machine (CPU, memory, the GPU if there is one)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Literal

import psutil

from securetrain.core.contracts.health import AttestationAge, Cpu, Gpu, GpuAttestationStatus, Health, Memory
from securetrain.tee.gpu_attestation import GpuAttestation

if TYPE_CHECKING:
    from securetrain.tee.agent.jobs import JobRunner

log = logging.getLogger(__name__)


class GpuProbe:
    """Finds the CUDA device once, in the background: importing torch takes seconds, health must not wait."""

    def __init__(self) -> None:
        self._result: Gpu | None = None
        self._done = threading.Event()
        threading.Thread(target=self._probe, name="gpu-probe", daemon=True).start()

    def _probe(self) -> None:
        try:
            import torch  # noqa: PLC0415 - deliberately late, see the class docstring

            if torch.cuda.is_available():
                index = torch.cuda.current_device()
                free, total = torch.cuda.mem_get_info(index)
                self._result = Gpu(
                    name=torch.cuda.get_device_name(index), count=torch.cuda.device_count(),
                    memory_total_bytes=total, memory_free_bytes=free,
                )  # fmt: skip
                log.info("GPU found: %s", self._result.name)
        except Exception as exc:  # noqa: BLE001 - a broken CUDA setup means no GPU, reported as such
            log.warning("GPU probe failed, training runs on the CPU: %s", exc)
        finally:
            self._done.set()

    def device(self) -> str | None:
        """The device training will use: ``cuda`` or ``cpu``; None while the probe still runs."""
        if not self._done.is_set():
            return None
        return "cuda" if self._result is not None else "cpu"

    def report(self) -> Gpu | Literal["probing"] | None:
        """The GPU, None when there is none, or ``"probing"`` while the probe still runs."""
        return self._result if self._done.is_set() else "probing"


def gpu_attestation_status(gpu_type: str | None, latest: GpuAttestation | None) -> GpuAttestationStatus | None:
    """What health says of the GPU the TEE requires (``gpu_type``; None: none) and its ``latest`` verified attestation."""
    if gpu_type is None:
        return None
    if latest is None:
        return GpuAttestationStatus(gpu_type=gpu_type, verified=False, cc_mode=None, gpus=[], measurements=None)
    measurements = {claims.get("measres") for claims in latest.gpus.values()}
    return GpuAttestationStatus(
        gpu_type=gpu_type, verified=True, cc_mode=latest.cc_mode,
        gpus=[str(claims.get("hwmodel", "")) for claims in latest.gpus.values()],
        measurements=measurements.pop() if len(measurements) == 1 else None,
    )  # fmt: skip


def agent_health(runner: JobRunner, gpu: GpuProbe) -> Health:
    """The agent's health: its TEE, the age of its latest attestation, the device, CPU, memory and GPU."""
    latest = runner.latest_attestation
    attestation = None
    if latest is not None:
        attestation = AttestationAge(
            age_seconds=round(time.time() - latest.attested_at, 3), expires_at=latest.token.expires_at,
            sequence=latest.sequence,
        )  # fmt: skip
    memory = psutil.virtual_memory()
    return Health(
        status="ok",
        tee_type=runner.tee_type,
        attestation=attestation,
        device=runner.device or gpu.device(),
        cpu=Cpu(count=os.cpu_count(), percent=psutil.cpu_percent(interval=None)),
        memory=Memory(
            total_bytes=memory.total, available_bytes=memory.available, agent_rss_bytes=psutil.Process().memory_info().rss
        ),
        gpu=gpu.report(),
        gpu_attestation=gpu_attestation_status(runner.gpu_type, latest.gpu if latest is not None else None),
    )
