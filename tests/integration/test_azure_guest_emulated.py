"""The emulated Azure CVM's evidence as MAA's AzureGuest request, to the attestation stand-in trusting the emulation's
simulated root: a token with the nested AzureGuest claims, marked simulated; refused by a service trusting another root."""

from __future__ import annotations

import base64
import hashlib
import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.attestation.azure_guest import GuestOs, azure_guest_request, user_data_for
from securetrain.core.attestation.maa import AttestationServiceClient
from securetrain.core.attestation.tokens import AuthorityKeys, TokenValidator
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.errors import SecuretrainError
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.tee.attest import Attester, TeeKey
from tests.attestation_service import attestation_service
from tests.unit.test_attestation_service import decode, service

pytestmark = pytest.mark.integration

AZURE_GUEST = "/attest/AzureGuest?api-version=2022-08-01"


@pytest.fixture(scope="module")
def request_body(emulated_cvm) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    document = {"report": {"snpCvm": emulated_cvm.provider().evidence(user_data_for(key), secrets.token_bytes(32))}}
    event_log = base64.b64decode(document["report"]["snpCvm"]["evidence"].pop("eventLog"))
    return azure_guest_request(CvmEvidence.from_document(document), key, GuestOs("Linux", "Debian", "12", "0", ""),
                               tcg_log=event_log)  # fmt: skip


def test_emulated_cvm_evidence_earns_a_simulated_azurevm_token(tmp_path, emulated_cvm, request_body):
    client = service(tmp_path / "maa", emulated_cvm.snp, None)
    response = client.post(AZURE_GUEST, json=request_body)
    assert response.status_code == 200, response.text
    claims = decode(client, response.json()["token"])
    assert claims["x-ms-attestation-type"] == "azurevm" and claims["x-securetrain-platform"] == "simulated"
    tee = claims["x-ms-isolation-tee"]
    assert tee["x-ms-compliance-status"] == "securetrain-simulated-cvm" and tee["x-ms-attestation-type"] == "sevsnpvm"
    assert claims["x-ms-azurevm-attested-pcrs"] and claims["x-ms-runtime"]["keys"][0]["kty"] == "RSA"


def test_under_another_root_it_is_refused(tmp_path, request_body):
    client = service(tmp_path / "maa", SimulatedSnpPlatform.load_or_create(tmp_path / "other-platform"), None)
    response = client.post(AZURE_GUEST, json=request_body)
    assert response.status_code == 400 and "snp-report" in response.json()["error"]["message"]



def test_the_tees_attester_attests_a_job_key_on_the_emulated_cvm(local_stack, emulated_cvm, tmp_path):
    """The TEE's own path: user data binding the job's key, a quote over the nonce's digest, the AzureGuest request,
    and a token it validates itself (nonce, runtime key, HCL user data) before any key is asked for."""
    with attestation_service(local_stack, tmp_path, "--trust-root", str(emulated_cvm.snp.root_certificate_path)) as url:
        ca = str(local_stack.ca_bundle)
        attester = Attester(emulated_cvm.provider(), AttestationServiceClient(url, verify=ca),
                            TokenValidator(AuthorityKeys(url, verify=ca)))  # fmt: skip
        key, nonce = TeeKey(), secrets.token_urlsafe(32)
        token = attester.attest(key, nonce)
        assert any(key.matches(jwk) for jwk in token.runtime_keys)
        assert token.claims["x-ms-attestation-type"] == "azurevm"
        assert token.claims["nonce"] == base64.b64encode(hashlib.sha256(nonce.encode()).digest()).decode()
        with pytest.raises(SecuretrainError):  # the attestation service spends each nonce once
            attester.attest(TeeKey(), nonce)
