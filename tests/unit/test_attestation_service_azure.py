"""The attestation stand-in's Azure endpoints, in process, on genuine evidence captured on Azure: AzureGuest for a
confidential VM, SevSnpVm with endorsements for Container Instances; tokens with MAA's claim sets, refusals that
name the check or the policy rule, nonces spent once."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from securetrain.core.attestation.azure_guest import GuestOs, azure_guest_request, b64url
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.standins.attestation_service.policy_jws import unsigned_policy_jws
from securetrain.localstack.standins.attestation_service.policy_store import PolicyStore
from securetrain.localstack.standins.attestation_service.appraisal import DEFAULT_POLICY, EVIDENCE_TYPES
from tests.unit.test_attestation_service import decode, service

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
CVM_DOCUMENT = json.loads(TESTDATA.joinpath("azure-cvm", "evidence.json").read_text())
RUNTIME_KEY = serialization.load_pem_public_key(TESTDATA.joinpath("azure-cvm", "runtime-key.pub.pem").read_bytes())
ACI_REQUEST = json.loads(TESTDATA.joinpath("azure-aci", "maa-request.json").read_text())
AZURE_GUEST = "/attest/AzureGuest?api-version=2022-08-01"
SEV_SNP_VM = "/attest/SevSnpVm?api-version=2022-08-01"
PCR7 = CVM_DOCUMENT["report"]["snpCvm"]["evidence"]["pcrs"]["7"]


def guest_request() -> dict:
    return azure_guest_request(CvmEvidence.from_document(CVM_DOCUMENT), RUNTIME_KEY, GuestOs("Linux", "Ubuntu", "22", "04", ""))


@pytest.fixture
def client(tmp_path, platform):
    return service(tmp_path / "maa", platform, None)


def with_policy(tmp_path, platform, attestation_type: str, policy: str):
    PolicyStore(tmp_path / "maa" / "policies", EVIDENCE_TYPES, DEFAULT_POLICY).set(attestation_type, unsigned_policy_jws(policy))
    return service(tmp_path / "maa", platform, None)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    return SimulatedSnpPlatform.load_or_create(tmp_path_factory.mktemp("platform"))


def test_genuine_cvm_evidence_earns_an_azurevm_token_once(client):
    response = client.post(AZURE_GUEST, json=guest_request())
    assert response.status_code == 200, response.text
    claims = decode(client, response.json()["token"])
    assert claims["x-ms-attestation-type"] == "azurevm" and claims["x-ms-azurevm-vmid"] == "BDD43C6F-0B79-4D3F-BE6A-C594AF3BAF6E"
    tee = claims["x-ms-isolation-tee"]
    assert tee["x-ms-attestation-type"] == "sevsnpvm" and tee["x-ms-compliance-status"] == "azure-compliant-cvm"
    assert tee["x-ms-runtime"]["vm-configuration"]["secure-boot"] is True
    assert claims["x-ms-azurevm-attested-pcr-values"]["pcr7"] == PCR7
    assert claims["x-ms-runtime"]["client-payload"]["nonce"] == CVM_DOCUMENT["report"]["snpCvm"]["nonce"]
    (key,) = claims["x-ms-runtime"]["keys"]
    assert key["kty"] == "RSA" and key["n"] == b64url(RUNTIME_KEY.public_numbers().n.to_bytes(256, "big"))
    assert claims["nonce"] == CVM_DOCUMENT["report"]["snpCvm"]["nonce"] and "x-ms-compliance-status" not in claims
    assert claims["x-securetrain-platform"] == "amd-sev-snp" and claims["x-ms-policy-hash"]
    replayed = client.post(AZURE_GUEST, json=guest_request())
    assert replayed.status_code == 400 and replayed.json()["error"]["code"] == "NonceReplayed"


def test_the_azureguest_policy_judges_nested_claims(tmp_path, platform):
    policy = ("version=1.0;\nauthorizationrules\n{\n"
              f'    [type=="x-ms-azurevm-attested-pcr-values.pcr7", value=="{PCR7[::-1]}"] => permit();\n}};\n')  # fmt: skip
    response = with_policy(tmp_path, platform, "AzureGuest", policy).post(AZURE_GUEST, json=guest_request())
    assert response.status_code == 400 and response.json()["error"]["code"] == "PolicyDenied"
    assert "x-ms-azurevm-attested-pcr-values.pcr7" in response.json()["error"]["message"]


def test_the_nonce_is_not_spent_by_a_refusal(tmp_path, platform):
    deny = 'version=1.0;\nauthorizationrules\n{\n    [type=="x-ms-isolation-tee.x-ms-sevsnpvm-vmpl", value==1] => permit();\n};\n'
    assert with_policy(tmp_path, platform, "AzureGuest", deny).post(AZURE_GUEST, json=guest_request()).status_code == 400
    permit = 'version=1.0;\nauthorizationrules\n{\n    [type=="x-ms-isolation-tee.x-ms-sevsnpvm-vmpl", value==0] => permit();\n};\n'
    assert with_policy(tmp_path, platform, "AzureGuest", permit).post(AZURE_GUEST, json=guest_request()).status_code == 200


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda i: i["TpmInfo"].update(PcrSignature=base64.b64encode(bytes(256)).decode()), "quote-signature"),
        (lambda i: i["TpmInfo"]["PCRs"][7].update(Digest=base64.b64encode(bytes(32)).decode()), "pcr-digest"),
        (lambda i: i["IsolationInfo"]["Evidence"].update(RunTimeData=b64url(b'{"keys": []}')), "runtime-claims"),
        (lambda i: i["ClientPayload"].update(nonce=base64.b64encode(bytes(32)).decode()), "quote-nonce"),
        (lambda i: i.update(OSType=1), "azure-guest-request"),
    ],
)
def test_mutations_are_refused_naming_the_check(client, change, check):
    body = guest_request()
    info = json.loads(base64.urlsafe_b64decode(body["AttestationInfo"] + "=" * (-len(body["AttestationInfo"]) % 4)))
    change(info)
    response = client.post(AZURE_GUEST, json={"AttestationInfo": b64url(json.dumps(info).encode())})
    assert response.status_code == 400, response.text
    assert check in response.json()["error"]["message"]


def test_genuine_aci_evidence_with_endorsements_earns_a_uvm_token(client):
    response = client.post(SEV_SNP_VM, json=ACI_REQUEST)
    assert response.status_code == 200, response.text
    claims = decode(client, response.json()["token"])
    assert claims["x-ms-attestation-type"] == "sevsnpvm" and claims["x-ms-compliance-status"] == "azure-compliant-uvm"
    assert claims["x-ms-sevsnpvm-uvm-endorsement"]
    assert claims["x-ms-runtime"]["keys"] and claims["nonce"] == str(ACI_REQUEST["nonce"])


def test_aci_evidence_with_a_changed_endorsement_is_refused(client):
    report = json.loads(base64.urlsafe_b64decode(ACI_REQUEST["report"] + "=" * (-len(ACI_REQUEST["report"]) % 4)))
    endorsements = json.loads(base64.urlsafe_b64decode(report["Endorsements"] + "=" * (-len(report["Endorsements"]) % 4)))
    uvm = bytearray(base64.urlsafe_b64decode(endorsements["Uvm"][0] + "=" * (-len(endorsements["Uvm"][0]) % 4)))
    uvm[-10] ^= 1  # inside the signature
    endorsements["Uvm"] = [b64url(bytes(uvm))]
    report["Endorsements"] = b64url(json.dumps(endorsements).encode())
    response = client.post(SEV_SNP_VM, json={**ACI_REQUEST, "report": b64url(json.dumps(report).encode())})
    assert response.status_code == 400 and "uvm-endorsement" in response.json()["error"]["message"], response.text
