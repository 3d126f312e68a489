"""``securetrain demo`` end to end: the DAGs ``make demo`` runs, in a state directory of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from securetrain.localstack.registry import SERVICES
from tests.conftest import free_ports

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_again(tmp_path):
    script = Path(sys.executable).parent / "securetrain"
    ports = {service.port_variable: str(port) for service, port in zip(SERVICES, free_ports(len(SERVICES)), strict=True)}
    env = {**os.environ, "SECURETRAIN_STATE_DIR": str(tmp_path / "state"), **ports}
    try:
        for _ in range(2):  # a second run reuses the stack, the Airflow database and the KEK
            result = subprocess.run([str(script), "demo"], env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            for stage in ("prepare_environment", "train", "register_model", "audit", "cleanup"):
                assert f"secure_training: {stage}" in result.stdout
            for stage in ("new_kek_version", "rewrap", "verify"):
                assert f"key_rotation: {stage}" in result.stdout
            assert "rotation:     new KEK version" in result.stdout and "the TEE rewrapped" in result.stdout
            assert "audit log verifies" in result.stdout and "demo complete" in result.stdout
            # The consortium: both hospitals' keys released under the contract all three signed, DP-SGD within
            # the budget, the model opened by the consumer with its own key.
            assert "signed by hospital-a, hospital-b, research-lab" in result.stdout
            assert result.stdout.count("released to the TEE under its own contract-bound policy") == 2
            assert "DP-SGD spent ε" in result.stdout and "ledger entries, verified" in result.stdout
            assert "research-lab opened its copy" in result.stdout
            assert "still holds the spend the TEE signed" in result.stdout
    finally:
        subprocess.run([str(script), "stack", "down"], env=env, capture_output=True, timeout=60)
