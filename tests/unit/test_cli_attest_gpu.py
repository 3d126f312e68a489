"""``securetrain attest verify-gpu`` on the genuine H100 report: claims on success, the failed check on refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from securetrain.core.cli import main
from securetrain.core.nvidia.spdm import GpuAttestationReport

H100 = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "nvidia-h100"
REPORT = H100 / "hopperAttestationReport.txt"
CHAIN = H100 / "hopper_cert_chain_case1.txt"
NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(["attest", "verify-gpu", "--chain", str(CHAIN), *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else captured.out, captured.err


def test_genuine_report_verifies_with_its_nonce(capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = run(capsys, "--report", str(REPORT), "--nonce", NONCE)
    assert code == 0
    assert result["claims"]["x-nvidia-gpu-attestation-report-signature-verified"] is True
    assert result["root"]["name"] == "NVIDIA Device Identity CA"
    assert result["simulated"] is False
    assert "no --reference" in err


def test_binary_report_and_reference_measurements(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = bytes.fromhex(REPORT.read_text().strip())
    (tmp_path / "report.bin").write_bytes(raw)
    measurements = GpuAttestationReport.from_bytes(raw).response.measurements()
    reference = {"source": "test RIM", "measurements": {"2": [measurements[2].hex()]}}
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    code, result, _ = run(
        capsys, "--report", str(tmp_path / "report.bin"), "--nonce", NONCE, "--reference", str(tmp_path / "reference.json")
    )
    assert code == 0
    assert result["claims"]["measres"] == "success"


def test_runtime_data_of_another_tee_is_refused_naming_the_nonce(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "runtime.json").write_bytes(b'{"nonce":"job-1"}')
    code, _, err = run(capsys, "--report", str(REPORT), "--runtime-data", str(tmp_path / "runtime.json"))
    assert code == 3
    assert "not requested for this TEE" in err


def test_nonce_arguments_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--report", str(REPORT))[0] == 2
    assert run(capsys, "--report", str(REPORT), "--nonce", "abcd")[0] == 2
