"""Secure Key Release on genuine Azure CVM evidence, end to end through the stand-ins and the real SDKs.

The evidence captured on an Azure confidential VM (``testdata/azure-cvm``) goes to an attestation service of the
test's own as MAA's ``/attest/AzureGuest`` request, with the runtime key the guest bound through its HCL user
data; the service verifies it under AMD's real roots at the real time, judges it by an AzureGuest attestation
policy that pins one of its PCR values, and signs a token; Key Vault releases a key whose release policy asks
for that token's claims; the released key opens with the runtime key's private half. Another PCR value in
either policy refuses it. The evidence's nonce is its quote's: each attestation service spends it once.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyClient, KeyReleasePolicy
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.attestation.azure_guest import GuestOs, azure_guest_request
from securetrain.core.attestation.maa import AttestationRefused, AttestationServiceClient
from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.keyvault import key_client, key_client_from_settings
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.skr import unwrap_released_key
from tests.attestation_service import attestation_service, policy_client

pytestmark = pytest.mark.integration

CVM = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "azure-cvm"
DOCUMENT = json.loads(CVM.joinpath("evidence.json").read_text())
PCRS = DOCUMENT["report"]["snpCvm"]["evidence"]["pcrs"]
RUNTIME_KEY = serialization.load_pem_private_key(CVM.joinpath("runtime-key.pem").read_bytes(), None)


def attestation_policy(pcr7: str) -> str:
    return ("version=1.0;\nauthorizationrules\n{\n"
            f'    [type=="x-ms-azurevm-attested-pcr-values.pcr7", value=="{pcr7}"] &&\n'
            '    [type=="x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable", value==false] => permit();\n};\n')  # fmt: skip


def genuine_request() -> dict:
    evidence = CvmEvidence.from_document(DOCUMENT)
    return azure_guest_request(evidence, RUNTIME_KEY.public_key(), GuestOs("Linux", "Ubuntu", "22", "04", ""))


@pytest.fixture(scope="module")
def authority(local_stack, tmp_path_factory) -> tuple[str, str]:
    """An attestation service whose AzureGuest policy admits the genuine CVM's PCR 7: its URL and the policy's hash."""
    policy = attestation_policy(PCRS["7"])
    with attestation_service(local_stack, tmp_path_factory.mktemp("azure-guest")) as url:
        with policy_client(local_stack, url) as client:
            client.set_policy("AzureGuest", policy)
        yield url, maa_policy_hash(policy)


@pytest.fixture(scope="module")
def token(local_stack, authority) -> str:
    return AttestationServiceClient(authority[0], verify=local_stack.env["SECURETRAIN_CA_BUNDLE"]).attest_azure_guest(genuine_request())


@pytest.fixture(scope="module")
def owner(local_stack) -> KeyClient:
    with key_client_from_settings(local_stack.settings("data-owner")) as client:
        yield client


@pytest.fixture
def cvm(local_stack, tee_settings) -> KeyClient:
    with key_client(local_stack.env["SECURETRAIN_KEYVAULT_URL"], tee_settings.credential(), ca_bundle=local_stack.ca_bundle) as client:
        yield client


def release_policy(authority: str, policy_hash: str, pcr7: str) -> ReleasePolicy:
    return ReleasePolicy.parse({
        "version": "1.0.0",
        "anyOf": [{"authority": authority, "allOf": [
            {"claim": "x-ms-attestation-type", "equals": "azurevm"},
            {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"},
            {"claim": "x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable", "equals": False},
            {"claim": "x-ms-azurevm-attested-pcr-values.pcr7", "equals": pcr7},
            {"claim": "x-ms-policy-hash", "equals": policy_hash},
        ]}],
    })  # fmt: skip


def key_with(owner: KeyClient, policy: ReleasePolicy) -> str:
    name = f"cvm-{uuid.uuid4().hex[:10]}"
    return owner.create_rsa_key(name, size=2048, exportable=True, release_policy=KeyReleasePolicy(policy.to_bytes())).id


def test_genuine_cvm_evidence_releases_a_key_to_its_runtime_key(local_stack, authority, token, owner, cvm):
    key_id = key_with(owner, release_policy(*authority, PCRS["7"]))
    name, version = key_id.rsplit("/", 2)[-2:]
    released = cvm.release_key(name, token, version=version)
    roots = [x509.load_pem_x509_certificate(Path(local_stack.env["SECURETRAIN_KEYVAULT_RELEASE_ROOT"]).read_bytes())]
    private_key = unwrap_released_key(released.value, RUNTIME_KEY, roots, expected_key_id=key_id)
    assert isinstance(private_key, rsa.RSAPrivateKey)


def test_a_release_policy_for_another_pcr_value_refuses(authority, token, owner, cvm):
    name = key_with(owner, release_policy(*authority, PCRS["0"])).rsplit("/", 2)[-2]
    with pytest.raises(HttpResponseError) as refused:
        cvm.release_key(name, token)
    assert refused.value.status_code == 403 and "pcr7" in refused.value.message


def test_an_attestation_policy_for_another_pcr_value_refuses_naming_it(local_stack, tmp_path):
    with attestation_service(local_stack, tmp_path) as url:
        with policy_client(local_stack, url) as client:
            client.set_policy("AzureGuest", attestation_policy(PCRS["0"]))
        attester = AttestationServiceClient(url, verify=local_stack.env["SECURETRAIN_CA_BUNDLE"])
        with pytest.raises(AttestationRefused) as refused:
            attester.attest_azure_guest(genuine_request())
    assert refused.value.code == "PolicyDenied" and "x-ms-azurevm-attested-pcr-values.pcr7" in str(refused.value)


def test_the_nonce_is_spent_once(local_stack, authority, token):
    with pytest.raises(AttestationRefused) as refused:
        AttestationServiceClient(authority[0], verify=local_stack.env["SECURETRAIN_CA_BUNDLE"]).attest_azure_guest(genuine_request())
    assert refused.value.code == "NonceReplayed"
