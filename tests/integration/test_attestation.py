"""Attestation over the wire: simulated SEV-SNP report -> the stack's attestation service -> validated token."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.services.attestation import approved_reference_values
from securetrain.core.attestation.maa import (
    AttestationRefused,
    AttestationServiceClient,
    report_data_for,
    runtime_data_bytes,
)
from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.attestation.tokens import AuthorityKeys, TokenRejected, TokenValidator
from securetrain.core.errors import SecurityViolation
from securetrain.core.snp.report import GuestPolicy

pytestmark = pytest.mark.integration


class Tee:
    """What the TEE does to attest: state its key and the nonce, bind them into REPORT_DATA, submit."""

    def __init__(self, stack) -> None:
        env = stack.env
        self.endpoint = env["SECURETRAIN_ATTESTATION_ENDPOINT"]
        self.ca = env["SECURETRAIN_CA_BUNDLE"]
        self.platform = SimulatedSnpPlatform.load_or_create(Path(env["SECURETRAIN_SNP_PLATFORM_DIR"]))
        self.measurement = bytes.fromhex(env["SECURETRAIN_CVM_LAUNCH_MEASUREMENT"])
        _, (self.host_data,) = approved_reference_values(Path(env["SECURETRAIN_ATTESTATION_POLICY"]).read_text())

    def attest(self, nonce: str, **report_fields) -> str:
        runtime = runtime_data_bytes({"keys": [{"kid": "tee-1", "kty": "RSA", "e": "AQAB", "n": "sw"}], "nonce": nonce})
        fields = {"measurement": self.measurement, "host_data": self.host_data, **report_fields}
        evidence = self.platform.report(report_data=report_data_for(runtime), **fields)
        client = AttestationServiceClient(self.endpoint, verify=self.ca)
        return client.attest_sev_snp_vm(evidence.report, evidence.vcek_chain_pem, runtime, nonce)

    def validator(self) -> TokenValidator:
        return TokenValidator(AuthorityKeys(self.endpoint, verify=self.ca))


@pytest.fixture(scope="module")
def tee(local_stack) -> Tee:
    return Tee(local_stack)


def test_simulated_report_to_validated_token(tee, local_stack):
    nonce = secrets.token_hex(16)
    token = tee.attest(nonce)
    validated = tee.validator().validate(
        token, expected_nonce=nonce, expected_policy_hash=local_stack.env["SECURETRAIN_ATTESTATION_POLICY_HASH"]
    )
    assert validated.claims["x-ms-sevsnpvm-hostdata"] == tee.host_data.hex()
    assert validated.claims["x-securetrain-platform"] == "simulated"
    assert validated.runtime_keys[0]["kid"] == "tee-1"


def test_the_tokens_policy_hash_is_maas_hash_of_the_approved_policy_text(tee, local_stack):
    validated = tee.validator().validate(tee.attest(secrets.token_hex(8)))
    approved = Path(local_stack.env["SECURETRAIN_ATTESTATION_POLICY"]).read_text()
    assert validated.claims["x-ms-policy-hash"] == maa_policy_hash(approved) == local_stack.env["SECURETRAIN_ATTESTATION_POLICY_HASH"]


def test_refusal_reaches_the_client_naming_the_policy_rule(tee):
    with pytest.raises(AttestationRefused, match=r'\[type=="x-ms-sevsnpvm-is-debuggable", value==false\] is not satisfied') as refused:
        tee.attest(secrets.token_hex(8), policy=GuestPolicy.build(debug=True))
    assert refused.value.code == "PolicyDenied"
    assert "authorization denied: no rule permitted the evidence: the rule at line" in str(refused.value)


def test_a_changed_trainer_is_refused(tee):
    with pytest.raises(AttestationRefused, match=f'x-ms-sevsnpvm-hostdata is "{"0" * 64}"'):
        tee.attest(secrets.token_hex(8), host_data=bytes(32))


def test_client_without_the_stack_ca_is_refused_by_tls(tee):
    with pytest.raises(SecurityViolation, match="TLS verification"):
        AttestationServiceClient(tee.endpoint).attest_sev_snp_vm(b"r", b"c", b"{}")


# --- the relying party's checks --------------------------------------------------------------------


def service_signing_key(stack, token: str) -> rsa.RSAPrivateKey:
    """The service's own signing key, read from its state: lets a test mint tokens as time passing would."""
    kid = jwt.get_unverified_header(token)["kid"]
    path = stack.state_dir / "data" / "attestation" / "signing" / f"{kid}.key.pem"
    return serialization.load_pem_private_key(path.read_bytes(), None)


def resign(token: str, key, *, header=None, **changes) -> str:
    claims = {**jwt.decode(token, options={"verify_signature": False}), **changes}
    return jwt.encode(claims, key, algorithm="RS256", headers=header or jwt.get_unverified_header(token))


def test_expired_token(tee, local_stack):
    token = tee.attest(secrets.token_hex(8))
    past = int(time.time()) - 7200
    expired = resign(token, service_signing_key(local_stack, token), iat=past, nbf=past, exp=past + 600)
    with pytest.raises(TokenRejected, match="expired"):
        tee.validator().validate(expired)


def test_token_not_yet_valid(tee, local_stack):
    token = tee.attest(secrets.token_hex(8))
    future = int(time.time()) + 7200
    early = resign(token, service_signing_key(local_stack, token), nbf=future, iat=future, exp=future + 600)
    with pytest.raises(TokenRejected, match="not yet valid"):
        tee.validator().validate(early)


def test_forged_signature(tee):
    token = tee.attest(secrets.token_hex(8))
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenRejected, match="signature does not verify"):
        tee.validator().validate(resign(token, forger, **{"x-ms-sevsnpvm-is-debuggable": True}))


def test_unknown_signing_key(tee):
    token = tee.attest(secrets.token_hex(8))
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenRejected, match="does not publish"):
        tee.validator().validate(resign(token, forger, header={"alg": "RS256", "kid": "attacker"}))


def test_other_issuer(tee, local_stack):
    token = tee.attest(secrets.token_hex(8))
    other = resign(token, service_signing_key(local_stack, token), iss="https://attacker.example")
    with pytest.raises(TokenRejected, match="not issued by"):
        tee.validator().validate(other)


def test_algorithm_confusion_is_refused(tee):
    token = tee.attest(secrets.token_hex(8))
    claims = jwt.decode(token, options={"verify_signature": False})
    hs = jwt.encode(claims, "a shared secret of 32 bytes or more", algorithm="HS256", headers={"kid": jwt.get_unverified_header(token)["kid"]})
    with pytest.raises(TokenRejected, match="only RS256"):
        tee.validator().validate(hs)


def test_stale_nonce_and_other_policy(tee):
    token = tee.attest("nonce-a")
    with pytest.raises(TokenRejected, match="stale or replayed"):
        tee.validator().validate(token, expected_nonce="nonce-b")
    with pytest.raises(TokenRejected, match="not the approved"):
        tee.validator().validate(token, expected_policy_hash="0" * 64)


def test_authority_over_untrusted_tls_is_refused(tee):
    with pytest.raises(TokenRejected, match="TLS verification"):
        TokenValidator(AuthorityKeys(tee.endpoint)).validate(tee.attest(secrets.token_hex(8)))


def test_azure_sdk_reads_metadata_and_certs_and_accepts_our_tokens(tee, local_stack):
    """azure-security-attestation has no SEV-SNP call; what it has works against the stand-in unchanged."""
    from azure.security.attestation import AttestationClient, AttestationToken, AttestationTokenValidationException

    credential = local_stack.credential("pipeline")
    client = AttestationClient(tee.endpoint, credential, connection_verify=tee.ca)
    assert client.get_open_id_metadata()["issuer"] == tee.endpoint
    signers = client.get_signing_certificates()
    assert signers and all(signer.certificates for signer in signers)
    token = AttestationToken(token=tee.attest(secrets.token_hex(8)))
    # The SDK's own validation: signature against /certs' x5c[0], expiry, issuer.
    token._validate_token(signers, validate_issuer=True, issuer=tee.endpoint)
    forged = AttestationToken(
        token=resign(token.to_jwt_string(), rsa.generate_private_key(public_exponent=65537, key_size=2048))
    )
    with pytest.raises(AttestationTokenValidationException, match="signature"):
        forged._validate_token(signers, validate_issuer=True, issuer=tee.endpoint)
