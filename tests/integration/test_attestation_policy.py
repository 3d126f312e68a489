"""Attestation policy management through ``azure-security-attestation``'s ``AttestationAdministrationClient``,
unpatched, over TLS with real Entra tokens from the stack's identity service: get, set and reset; who may; what
is refused; and attestation following the policy in force, its tokens carrying MAA's hash of it.

The stack's own service is only read (its approved policy is what every other test relies on); changes are made
on a service of this module's own, configured like the stack's.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.security.attestation import AttestationPolicyToken, PolicyModification

from securetrain.core.attestation.maa import AttestationRefused, AttestationServiceClient, report_data_for, runtime_data_bytes
from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.attestation.tokens import AuthorityKeys, TokenValidator
from securetrain.localstack.platform.local_cvm import LAUNCH_MEASUREMENT
from securetrain.core.snp.report import GuestPolicy
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.services.attestation import policy_administration_client
from securetrain.localstack.standins.attestation_service.appraisal import DEFAULT_POLICY
from tests.attestation_service import attestation_service, policy_client

pytestmark = pytest.mark.integration

SEV_SNP_VM = "SevSnpVm"  # azure-security-attestation 1.0's AttestationType predates it: the SDK takes the name
ISSUING = """version=1.0;
authorizationrules
{
    // Any guest but a debuggable one.
    [type=="x-ms-sevsnpvm-is-debuggable", value==true] => deny();
    => permit();
};
issuancerules
{
    c:[type=="x-ms-sevsnpvm-hostdata"] => issue(type="workload", value=c.value);
};
"""


@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("policy-service")


@pytest.fixture(scope="module")
def service(local_stack, directory) -> str:
    with attestation_service(local_stack, directory) as url:
        yield url


def attest(stack, url: str, **report_fields) -> dict:
    """Simulated evidence to the service at ``url``; the validated token's claims."""
    platform = SimulatedSnpPlatform.load_or_create(Path(stack.env["SECURETRAIN_SNP_PLATFORM_DIR"]))
    nonce = secrets.token_hex(16)
    runtime = runtime_data_bytes({"keys": [], "nonce": nonce})
    fields = {"measurement": LAUNCH_MEASUREMENT, "host_data": b"\x42" * 32, **report_fields}
    evidence = platform.report(report_data=report_data_for(runtime), **fields)
    token = AttestationServiceClient(url, verify=str(stack.ca_bundle)).attest_sev_snp_vm(
        evidence.report, evidence.vcek_chain_pem, runtime, nonce
    )
    return dict(TokenValidator(AuthorityKeys(url, verify=str(stack.ca_bundle))).validate(token, expected_nonce=nonce).claims)


def test_the_stacks_service_has_the_approved_policy_set_through_the_sdk(local_stack):
    env = local_stack.env
    with policy_client(local_stack, env["SECURETRAIN_ATTESTATION_ENDPOINT"]) as client:
        text, token = client.get_policy(SEV_SNP_VM)
    assert text == Path(env["SECURETRAIN_ATTESTATION_POLICY"]).read_text()
    assert maa_policy_hash(text) == env["SECURETRAIN_ATTESTATION_POLICY_HASH"]
    assert token.issuer == env["SECURETRAIN_ATTESTATION_ENDPOINT"]  # the SDK validated its signature against /certs


def test_set_get_attest_reset(local_stack, service):
    with policy_client(local_stack, service) as client:
        assert client.get_policy(SEV_SNP_VM)[0] == DEFAULT_POLICY
        result, _ = client.set_policy(SEV_SNP_VM, ISSUING)
        assert result.policy_resolution == PolicyModification.UPDATED
        # The SDK's documented check that the service received the policy as sent.
        sent = AttestationPolicyToken(ISSUING).to_jwt_string()
        assert result.policy_token_hash == hashlib.sha256(sent.encode()).digest()
        assert client.get_policy(SEV_SNP_VM)[0] == ISSUING

        claims = attest(local_stack, service)
        assert claims["x-ms-policy-hash"] == maa_policy_hash(ISSUING)
        assert claims["workload"] == "42" * 32
        with pytest.raises(AttestationRefused, match="denied by the rule at line 5") as refused:
            attest(local_stack, service, policy=GuestPolicy.build(debug=True))
        assert refused.value.code == "PolicyDenied"

        result, _ = client.reset_policy(SEV_SNP_VM)
        assert result.policy_resolution == PolicyModification.REMOVED
        assert client.get_policy(SEV_SNP_VM)[0] == DEFAULT_POLICY
    claims = attest(local_stack, service)
    assert claims["x-ms-policy-hash"] == maa_policy_hash(DEFAULT_POLICY) and "workload" not in claims


def test_a_policy_the_service_does_not_evaluate_is_refused_and_the_old_one_stays(local_stack, service):
    with policy_client(local_stack, service) as client:
        client.set_policy(SEV_SNP_VM, ISSUING)
        broken = ISSUING.replace("version=1.0;", "version=1.2;")
        with pytest.raises(HttpResponseError) as refused:
            client.set_policy(SEV_SNP_VM, broken)
        assert refused.value.status_code == 400 and refused.value.error.code == "InvalidPolicy"
        assert "line 1, column 9: policy version 1.2 is not supported" in refused.value.message
        assert client.get_policy(SEV_SNP_VM)[0] == ISSUING
        client.reset_policy(SEV_SNP_VM)


def test_only_the_policy_administrators_role_may_change_it(local_stack, service, directory):
    with policy_client(local_stack, service, identity="pipeline") as client:
        for call in (lambda: client.get_policy(SEV_SNP_VM), lambda: client.set_policy(SEV_SNP_VM, ISSUING),
                     lambda: client.reset_policy(SEV_SNP_VM)):  # fmt: skip
            with pytest.raises(HttpResponseError) as refused:
                call()
            assert refused.value.status_code == 403
            assert "Microsoft.Attestation/attestationProviders/attestation/" in refused.value.message
    decisions = [json.loads(line) for line in (directory / "state" / "policy.jsonl").read_text().splitlines()]
    denied = [d for d in decisions if d["decision"] == "denied" and d["identity"] == "pipeline"]
    assert len(denied) == 3 and {d["status"] for d in denied} == {403}


def test_a_token_for_another_service_is_not_accepted(local_stack, service):
    class VaultToken:
        """The data owner's credential, asking for Key Vault's audience whatever the client asks for."""

        def __init__(self, credential) -> None:
            self._credential = credential

        def get_token(self, *scopes, **kwargs):
            return self._credential.get_token("https://vault.azure.net/.default", **kwargs)

    client = policy_administration_client(service, VaultToken(local_stack.credential("data-owner")), local_stack.ca_bundle)
    with client, pytest.raises(ClientAuthenticationError) as refused:
        client.get_policy(SEV_SNP_VM)
    assert "Invalid audience. Expected https://attest.azure.net" in refused.value.message
