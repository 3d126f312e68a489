"""``securetrain attest verify`` on the genuine Azure evidence: claims on success, the failed check on refusal.

These run at the current time, as a user's verification does: the genuine VCEKs are valid into the 2030s, and
the ACI endorsement's chain is judged at its signing time (see docs/attestation.md).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from securetrain.core.cli import main

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
CVM = TESTDATA / "azure-cvm" / "evidence.json"
ACI = TESTDATA / "azure-aci" / "evidence.json"
ACI_REQUEST = TESTDATA / "azure-aci" / "maa-request.json"
CCE_POLICY = TESTDATA / "azure-aci" / "cce-policy.txt"
CVM_NONCE = json.loads(CVM.read_text())["report"]["snpCvm"]["nonce"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(["attest", "verify", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else captured.out, captured.err


def edited(tmp_path: Path, source: Path, edit: Any) -> Path:
    document = json.loads(source.read_text())
    edit(document)
    path = tmp_path / source.name
    path.write_text(json.dumps(document))
    return path


def test_genuine_cvm_evidence_verifies_with_its_nonce(capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = run(capsys, "--evidence", str(CVM), "--nonce", CVM_NONCE)
    assert code == 0, err
    assert result["platform"] == "azure-cvm" and result["fresh"] and not result["simulated"]
    tee = result["claims"]["x-ms-isolation-tee"]
    assert tee["x-ms-compliance-status"] == "azure-compliant-cvm"
    assert tee["x-ms-sevsnpvm-is-debuggable"] is False
    assert result["claims"]["nonce"] == CVM_NONCE


def test_cvm_evidence_without_a_nonce_verifies_but_says_it_is_not_shown_fresh(capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = run(capsys, "--evidence", str(CVM))
    assert code == 0 and not result["fresh"]
    assert "not" in err and "fresh" in err


def test_cvm_evidence_for_another_nonce_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--evidence", str(CVM), "--nonce", base64.b64encode(bytes(32)).decode())
    assert code == 3 and out == ""
    assert "expected-nonce" in err


def test_a_changed_pcr_value_is_refused_by_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def change_pcr(document: dict[str, Any]) -> None:
        pcrs = document["report"]["snpCvm"]["evidence"]["pcrs"]
        index = sorted(pcrs)[0]
        pcrs[index] = base64.b64encode(bytes(32)).decode()

    code, _, err = run(capsys, "--evidence", str(edited(tmp_path, CVM, change_pcr)), "--nonce", CVM_NONCE)
    assert code == 3 and "pcr-digest" in err


def test_genuine_aci_evidence_binds_its_container_policy(capsys: pytest.CaptureFixture[str]) -> None:
    for evidence in (ACI, ACI_REQUEST):
        code, result, err = run(capsys, "--evidence", str(evidence), "--cce-policy", str(CCE_POLICY))
        assert code == 0, err
        assert result["platform"] == "azure-container-instances" and result["workload"]["bound"]
        assert result["claims"]["x-ms-compliance-status"] == "azure-compliant-uvm"
        assert result["claims"]["x-ms-sevsnpvm-hostdata"] == result["workload"]["cce_policy_sha256"]


def test_aci_evidence_without_a_policy_verifies_and_warns_that_no_workload_is_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, result, err = run(capsys, "--evidence", str(ACI))
    assert code == 0 and not result["workload"]["bound"]
    assert "no workload is bound" in err


def test_another_container_policy_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    other = tmp_path / "cce-policy.txt"
    other.write_text("ccepolicy: " + base64.b64encode(b"package policy\n").decode() + "\n")
    code, _, err = run(capsys, "--evidence", str(ACI), "--cce-policy", str(other))
    assert code == 3 and "host-data" in err


def test_a_changed_uvm_endorsement_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def flip(document: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(document["report"]["snpCACI"]["uvmEndorsements"]))
        raw[-1] ^= 1  # the last byte of the COSE signature
        document["report"]["snpCACI"]["uvmEndorsements"] = base64.b64encode(bytes(raw)).decode()

    code, _, err = run(capsys, "--evidence", str(edited(tmp_path, ACI, flip)), "--cce-policy", str(CCE_POLICY))
    assert code == 3 and "uvm-endorsement.signature" in err


@pytest.mark.parametrize(
    ("evidence", "extra", "message"),
    [
        (CVM, ["--cce-policy", str(CCE_POLICY)], "--cce-policy is for Azure Container Instances"),
        (ACI, ["--nonce", CVM_NONCE], "--nonce and --allow-debug are for confidential VM"),
        (CVM, ["--nonce", "not base64!"], "--nonce is not base64"),
    ],
)
def test_options_that_do_not_fit_the_evidence_are_usage_errors(
    capsys: pytest.CaptureFixture[str], evidence: Path, extra: list[str], message: str
) -> None:
    code, _, err = run(capsys, "--evidence", str(evidence), *extra)
    assert code == 2 and message in err


def test_a_file_that_is_not_json_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "evidence.json"
    bad.write_text("{")
    code, _, err = run(capsys, "--evidence", str(bad))
    assert code == 2 and "is not JSON" in err


def test_a_document_of_no_known_platform_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    unknown = tmp_path / "evidence.json"
    unknown.write_text(json.dumps({"report": {"tdxCvm": {}}}))
    code, _, err = run(capsys, "--evidence", str(unknown))
    assert code == 3 and "evidence-document" in err
