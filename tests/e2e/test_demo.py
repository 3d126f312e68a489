"""``securetrain demo`` end to end: the path ``make demo`` runs, in a state directory of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from securetrain.stack.registry import SERVICES
from tests.conftest import free_ports

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_again(tmp_path):
    script = Path(sys.executable).parent / "securetrain"
    ports = {service.port_variable: str(port) for service, port in zip(SERVICES, free_ports(len(SERVICES)), strict=True)}
    env = {**os.environ, "SECURETRAIN_STATE_DIR": str(tmp_path / "state"), **ports}
    try:
        for _ in range(2):  # a second run reuses the running stack and the demo KEK
            result = subprocess.run([str(script), "demo"], env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr
            assert "every segment authenticated" in result.stdout
            assert "demo complete" in result.stdout
    finally:
        subprocess.run([str(script), "stack", "down"], env=env, capture_output=True, timeout=60)
