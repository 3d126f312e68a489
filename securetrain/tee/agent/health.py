"""What ``GET /v1/health`` reports about the machine: CPU, memory, and the GPU if there is one."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import psutil

log = logging.getLogger(__name__)


class GpuProbe:
    """Finds the CUDA device once, in the background: importing torch takes seconds, health must not wait."""

    def __init__(self) -> None:
        self._result: dict[str, Any] | None = None
        self._done = threading.Event()
        threading.Thread(target=self._probe, name="gpu-probe", daemon=True).start()

    def _probe(self) -> None:
        try:
            import torch  # noqa: PLC0415 - deliberately late, see the class docstring

            if torch.cuda.is_available():
                index = torch.cuda.current_device()
                free, total = torch.cuda.mem_get_info(index)
                self._result = {
                    "name": torch.cuda.get_device_name(index),
                    "count": torch.cuda.device_count(),
                    "memory_total_bytes": total,
                    "memory_free_bytes": free,
                }
                log.info("GPU found: %s", self._result["name"])
        except Exception as exc:  # noqa: BLE001 - a broken CUDA setup means no GPU, reported as such
            log.warning("GPU probe failed, training runs on the CPU: %s", exc)
        finally:
            self._done.set()

    def device(self) -> str | None:
        """The device training will use: ``cuda`` or ``cpu``; None while the probe still runs."""
        if not self._done.is_set():
            return None
        return "cuda" if self._result is not None else "cpu"

    def report(self) -> dict[str, Any] | str | None:
        """The GPU, None when there is none, or ``"probing"`` while the probe still runs."""
        return self._result if self._done.is_set() else "probing"


def machine_health(gpu: GpuProbe) -> dict[str, Any]:
    """CPU count and load, memory (machine and agent), and the GPU."""
    memory = psutil.virtual_memory()
    return {
        "cpu": {"count": os.cpu_count(), "percent": psutil.cpu_percent(interval=None)},
        "memory": {
            "total_bytes": memory.total,
            "available_bytes": memory.available,
            "agent_rss_bytes": psutil.Process().memory_info().rss,
        },
        "gpu": gpu.report(),
    }
