"""The ACI verifier: the genuine evidence verifies with its CCE policy; every change it must catch is refused by name."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from securetrain.core.aci.errors import AciEvidenceError
from securetrain.core.aci.evidence import AciEvidence, load_aci_evidence
from securetrain.core.aci.verifier import VerifiedAciEvidence, verify_aci_document, verify_aci_evidence
from securetrain.core.attestation.claims import AZURE_COMPLIANT_UVM, SIMULATED_UVM
from securetrain.core.snp.report import SIGNED_SIZE
from securetrain.core.snp.roots import AMD_ROOTS
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from tests.aci_evidence import CCE_POLICY, DOCUMENT, MAA_REQUEST, MEASUREMENT, NOW, b64url, flipped, own_signer

GENUINE = AciEvidence.from_document(DOCUMENT)
HOST_DATA = "73973b78d70cc68353426de188db5dfc57e5b766e399935fb73a61127ea26d20"

# The claims of MAA's sample token for a confidential ACI container group (learn.microsoft.com, "Attestation
# in Confidential containers on Azure Container Instances"), less the token's own (iss, exp, jti ...) and the
# policy hash, which the issuing service adds.
MAA_ACI_CLAIMS = {
    "nonce", "x-ms-attestation-type", "x-ms-compliance-status", "x-ms-runtime", "x-ms-ver",
    "x-ms-sevsnpvm-authorkeydigest", "x-ms-sevsnpvm-bootloader-svn", "x-ms-sevsnpvm-familyId",
    "x-ms-sevsnpvm-guestsvn", "x-ms-sevsnpvm-hostdata", "x-ms-sevsnpvm-idkeydigest", "x-ms-sevsnpvm-imageId",
    "x-ms-sevsnpvm-is-debuggable", "x-ms-sevsnpvm-launchmeasurement", "x-ms-sevsnpvm-microcode-svn",
    "x-ms-sevsnpvm-migration-allowed", "x-ms-sevsnpvm-reportdata", "x-ms-sevsnpvm-reportid",
    "x-ms-sevsnpvm-smt-allowed", "x-ms-sevsnpvm-snpfw-svn", "x-ms-sevsnpvm-tee-svn",
    "x-ms-sevsnpvm-uvm-endorsement", "x-ms-sevsnpvm-vmpl",
}  # fmt: skip


def verify(evidence: AciEvidence = GENUINE, cce_policy: bytes | None = CCE_POLICY, **options) -> VerifiedAciEvidence:
    return verify_aci_evidence(evidence, cce_policy=cce_policy, trusted_roots=options.pop("roots", AMD_ROOTS),
                               now=options.pop("now", NOW), **options)  # fmt: skip


def refused(evidence: AciEvidence = GENUINE, cce_policy: bytes | None = CCE_POLICY, **options) -> AciEvidenceError:
    with pytest.raises(AciEvidenceError) as caught:
        verify(evidence, cce_policy, **options)
    assert str(caught.value).startswith(caught.value.check + ": ")
    return caught.value


def test_genuine_document_verifies_with_its_policy() -> None:
    verified = verify()
    assert verified.workload_bound and verified.host_data.hex() == HOST_DATA
    assert verified.uvm.launch_measurement == verified.report.measurement == MEASUREMENT
    assert not verified.debug and verified.vmpl == 0 and not verified.simulated
    assert verified.checks == ("cce-policy", "snp-report", "uvm-endorsement", "uvm-measurement", "runtime-data", "host-data")
    claims = verified.claims()
    assert claims["x-ms-attestation-type"] == "sevsnpvm"
    assert claims["x-ms-compliance-status"] == AZURE_COMPLIANT_UVM
    assert claims["x-ms-sevsnpvm-hostdata"] == HOST_DATA
    assert claims["x-ms-sevsnpvm-is-debuggable"] is False
    assert claims["x-ms-sevsnpvm-uvm-endorsement"] == {
        "x-ms-sevsnpvm-guestsvn": "103",
        "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT.hex(),
    }
    assert set(claims) == MAA_ACI_CLAIMS - {"nonce", "x-ms-runtime"}  # the document has neither


def test_genuine_maa_request_verifies_and_gives_maas_claim_set() -> None:
    verified = verify(load_aci_evidence(MAA_REQUEST))
    claims = verified.claims()
    assert set(claims) == MAA_ACI_CLAIMS
    assert claims["nonce"] == "13202930541250959283"
    assert claims["x-ms-runtime"]["keys"][0]["kid"] == "96478d5f"
    assert claims["x-ms-sevsnpvm-reportdata"][64:] == "0" * 64
    assert "runtime-data" in verified.checks


def test_uvm_svn_is_exposed_and_not_the_reports_guest_svn() -> None:
    verified = verify()
    assert verified.uvm.svn == 103
    assert verified.report.guest_svn == 2
    assert verified.claims()["x-ms-sevsnpvm-guestsvn"] == 2


def test_without_a_policy_the_evidence_verifies_but_the_workload_is_not_bound() -> None:
    verified = verify(cce_policy=None)
    assert not verified.workload_bound
    assert "host-data" not in verified.checks and "cce-policy" not in verified.checks
    assert verified.to_dict()["workload"] == {"bound": False, "host_data": HOST_DATA, "cce_policy_sha256": None}


def test_every_signed_byte_of_the_snp_report_is_protected() -> None:
    for offset in range(SIGNED_SIZE):
        evidence = dataclasses.replace(GENUINE, report=flipped(GENUINE.report, offset, 1 << offset % 8))
        assert refused(evidence).check == "snp-report"


def test_snp_refusal_names_the_snp_check() -> None:
    evidence = dataclasses.replace(GENUINE, report=flipped(GENUINE.report, 0x90))
    assert "ReportSignatureInvalid" in str(refused(evidence))
    assert "UntrustedRoot" in str(refused(roots=()))
    chain = GENUINE.vcek_chain_pem.replace(b"-----BEGIN CERTIFICATE-----", b"", 1)
    assert refused(dataclasses.replace(GENUINE, vcek_chain_pem=chain)).check == "snp-report"


def test_a_changed_endorsement_is_refused() -> None:
    endorsement = GENUINE.uvm_endorsement
    payload_at = endorsement.index(b'"x-ms-sevsnpvm-launchmeasurement": "') + 40
    changed = dataclasses.replace(GENUINE, uvm_endorsement=flipped(endorsement, payload_at))
    assert refused(changed).check == "uvm-endorsement.signature"


def test_an_endorsement_of_another_measurement_is_refused() -> None:
    signer = own_signer()
    other = bytes(48)
    evidence = dataclasses.replace(GENUINE, uvm_endorsement=signer.endorse(other))
    refusal = refused(evidence, uvm_trust=signer.trust)
    assert refusal.check == "uvm-measurement" and other.hex() in str(refusal)
    # The same signer endorsing the report's measurement: accepted under that trust, marked simulated.
    verified = verify(dataclasses.replace(GENUINE, uvm_endorsement=signer.endorse()), uvm_trust=signer.trust)
    assert verified.simulated and verified.claims()["x-ms-compliance-status"] == SIMULATED_UVM


def test_the_genuine_endorsement_is_refused_under_another_trust() -> None:
    assert refused(uvm_trust=own_signer().trust).check == "uvm-endorsement.root"


def test_a_changed_policy_is_refused() -> None:
    rego = base64.b64decode(CCE_POLICY.split()[1])
    changed = flipped(rego, len(rego) // 2)
    policy = b"ccepolicy: " + base64.b64encode(changed) + b"\n"
    refusal = refused(cce_policy=policy)
    assert refusal.check == "host-data" and hashlib.sha256(changed).hexdigest() in str(refusal)
    assert refused(cce_policy=CCE_POLICY.replace(HOST_DATA.encode(), b"00" * 32)).check == "cce-policy"


def test_changed_runtime_data_is_refused() -> None:
    key = DOCUMENT["publicKey"]
    changed = dataclasses.replace(GENUINE, runtime_data=key.replace("MIIB", "MIIC", 1).encode())
    assert refused(changed).check == "runtime-data"
    request = copy.deepcopy(MAA_REQUEST)
    runtime = json.loads(base64.urlsafe_b64decode(request["runtimeData"]["data"]))
    runtime["keys"][0]["kid"] = "another"
    request["runtimeData"]["data"] = b64url(json.dumps(runtime).encode())
    assert refused(load_aci_evidence(request)).check == "runtime-data"


def test_report_without_runtime_data_leaves_report_data_unchecked() -> None:
    verified = verify(dataclasses.replace(GENUINE, runtime_data=None))
    assert "runtime-data" not in verified.checks and not verified.to_dict()["runtime_data_bound"]


def test_simulated_platform_and_signer_verify_as_simulated(tmp_path: Path) -> None:
    platform = SimulatedSnpPlatform.load_or_create(tmp_path / "platform")
    runtime = b'{"keys": []}'
    rego = b"package policy\n"
    simulated = platform.report(
        report_data=hashlib.sha256(runtime).digest() + bytes(32),
        measurement=MEASUREMENT,
        host_data=hashlib.sha256(rego).digest(),
    )
    signer = own_signer()
    evidence = AciEvidence(simulated.report, simulated.vcek_chain_pem, signer.endorse(), runtime, json.loads(runtime))
    policy = b"ccepolicy: " + base64.b64encode(rego)
    verified = verify_aci_evidence(evidence, cce_policy=policy, trusted_roots=[platform.root], uvm_trust=signer.trust)
    assert verified.simulated and verified.workload_bound
    assert verified.claims()["x-ms-compliance-status"] == SIMULATED_UVM
    # AMD's roots do not vouch for the simulated chip.
    with pytest.raises(AciEvidenceError, match="UntrustedRoot"):
        verify_aci_evidence(evidence, cce_policy=policy, trusted_roots=AMD_ROOTS, uvm_trust=signer.trust)


def test_verify_aci_document_gives_a_json_ready_result() -> None:
    result = verify_aci_document(MAA_REQUEST, cce_policy=CCE_POLICY.decode(), now=NOW)
    assert json.loads(json.dumps(result)) == result
    assert result["platform"] == "azure-container-instances"
    assert result["workload"] == {"bound": True, "host_data": HOST_DATA, "cce_policy_sha256": HOST_DATA}
    assert result["uvm_endorsement"]["svn"] == 103
    assert result["claims"]["x-ms-compliance-status"] == AZURE_COMPLIANT_UVM
    assert verify_aci_document(DOCUMENT, now=NOW)["workload"]["bound"] is False
    with pytest.raises(AciEvidenceError) as caught:
        verify_aci_document(DOCUMENT, cce_policy="ccepolicy: \udcff", now=NOW)
    assert caught.value.check == "cce-policy"
    with pytest.raises(AciEvidenceError) as caught:
        verify_aci_document({"report": {}}, now=NOW)
    assert caught.value.check == "evidence-document"
