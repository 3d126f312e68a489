"""``securetrain demo`` end to end: the path ``make demo`` runs, in a state directory of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_again(tmp_path):
    script = Path(sys.executable).parent / "securetrain"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "SECURETRAIN_STATE_DIR": str(tmp_path / "state"), "SECURETRAIN_AZURITE_PORT": str(port)}
    try:
        for _ in range(2):  # a second run reuses the running stack and the demo KEK
            result = subprocess.run([str(script), "demo"], env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr
            assert "every segment authenticated" in result.stdout
            assert "demo complete" in result.stdout
    finally:
        subprocess.run([str(script), "stack", "down"], env=env, capture_output=True, timeout=60)
