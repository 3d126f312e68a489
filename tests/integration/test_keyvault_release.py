"""Secure Key Release end to end, and every way it must refuse, through the real ``KeyClient``.

The TEE's side: simulated SEV-SNP report binding the TEE key -> the stack's attestation service over
HTTPS -> token -> ``KeyClient.release_key`` as the ``cvm`` identity -> ``securetrain.core.skr`` unwraps the KEK
with the TEE key -> the KEK opens a file sealed to it. Claims an honest attestation service never signs
(debuggable guest, unknown measurement, no runtime key) come from a second, lax attestation service
started here, with a lax attestation policy set through the SDK and named by the keys' policies: the release
policy must stop what the attestation policy let through.
"""

from __future__ import annotations

import io
import json
import secrets
import time
import uuid
from pathlib import Path

import jwt
import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyClient, KeyReleasePolicy
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.localstack.platform.local_cvm import LAUNCH_MEASUREMENT
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.services.attestation import approved_reference_values
from securetrain.core.attestation.maa import AttestationServiceClient, report_data_for, runtime_data_bytes
from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.keyvault import kek_public_key, key_client, key_client_from_settings
from securetrain.localstack.pki import LocalCA
from securetrain.core.approved_release_policies import SnpReferenceValues, approved_release_policy
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.sealed import KekPrivateKey, seal, unseal
from securetrain.core.skr import ReleasedKeyRejected, unwrap_released_key
from securetrain.core.snp.report import GuestPolicy
from tests.attestation_service import attestation_service, policy_client
from securetrain.tee.attest import TeeKey

pytestmark = pytest.mark.integration


class Attester:
    """A TEE on the simulated platform attesting to one attestation service."""

    def __init__(self, env: dict[str, str], endpoint: str) -> None:
        self.endpoint, self.ca = endpoint, env["SECURETRAIN_CA_BUNDLE"]
        self.platform = SimulatedSnpPlatform.load_or_create(Path(env["SECURETRAIN_SNP_PLATFORM_DIR"]))
        _, (self.host_data,) = approved_reference_values(approved_attestation_policy(env))

    def token(self, tee_key: TeeKey | None, *, with_key: bool = True, **report_fields) -> str:
        nonce = secrets.token_hex(16)
        statement = {"keys": [tee_key.public_jwk()] if with_key and tee_key else [], "nonce": nonce}
        runtime = runtime_data_bytes(statement)
        fields = {"measurement": LAUNCH_MEASUREMENT, "host_data": self.host_data, **report_fields}
        evidence = self.platform.report(report_data=report_data_for(runtime), **fields)
        client = AttestationServiceClient(self.endpoint, verify=self.ca)
        return client.attest_sev_snp_vm(evidence.report, evidence.vcek_chain_pem, runtime, nonce)


def approved_attestation_policy(env: dict[str, str]) -> str:
    return Path(env["SECURETRAIN_ATTESTATION_POLICY"]).read_text()


@pytest.fixture(scope="module")
def env(local_stack) -> dict[str, str]:
    return local_stack.env


@pytest.fixture(scope="module")
def lax_authority(local_stack, tmp_path_factory) -> tuple[str, str]:
    """A second attestation service whose policy accepts debug guests and any measurement: its URL and that
    policy's hash."""
    _, (host_data,) = approved_reference_values(approved_attestation_policy(local_stack.env))
    lax = ("version=1.0;\nauthorizationrules\n{\n"
           f'    [type=="x-ms-sevsnpvm-hostdata", value=="{host_data.hex()}"] => permit();\n}};\n')  # fmt: skip
    with attestation_service(local_stack, tmp_path_factory.mktemp("lax-attestation")) as url:
        with policy_client(local_stack, url) as client:
            client.set_policy("SevSnpVm", lax)
        yield url, maa_policy_hash(lax)


@pytest.fixture(scope="module")
def pipeline(local_stack) -> KeyClient:
    with key_client_from_settings(local_stack.settings()) as client:
        yield client


@pytest.fixture(scope="module")
def owner(local_stack) -> KeyClient:
    """The data owner's identity: the one that creates keys and chooses their release policies."""
    with key_client_from_settings(local_stack.settings("data-owner")) as client:
        yield client


@pytest.fixture
def cvm(local_stack, tee_settings) -> KeyClient:
    """Key Vault as the TEE's managed identity (the test in the TEE's place)."""
    with key_client(local_stack.env["SECURETRAIN_KEYVAULT_URL"], tee_settings.credential(), ca_bundle=local_stack.ca_bundle) as client:
        yield client


@pytest.fixture(scope="module")
def vault_roots(env) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(Path(env["SECURETRAIN_KEYVAULT_RELEASE_ROOT"]).read_bytes())]


def _key_with_policy(owner: KeyClient, policy: ReleasePolicy, **kwargs) -> str:
    name = f"skr-{uuid.uuid4().hex[:10]}"
    key = owner.create_rsa_key(
        name, size=2048, exportable=True, release_policy=KeyReleasePolicy(policy.to_bytes()), **kwargs
    )
    return key.name


def _approved_for(env, authority: str, *, simulated: bool = False, host_data: set[bytes] | None = None) -> ReleasePolicy:
    """The ``snp`` platform's approved policy for the stack's attestation policy, trusting ``authority``; the
    production compliance status unless ``simulated``, the approved HOST_DATA unless ``host_data``."""
    policy = approved_attestation_policy(env)
    measurements, approved_host_data = approved_reference_values(policy)
    return approved_release_policy(SnpReferenceValues(
        attestation_authority=authority, attestation_policy=policy, simulated=simulated,
        launch_measurements=frozenset(value.hex() for value in measurements),
        host_data=frozenset(value.hex() for value in (host_data or approved_host_data)),
    ))  # fmt: skip


def _with_policy_hash(policy: ReleasePolicy, policy_hash: str) -> ReleasePolicy:
    """``policy`` expecting tokens issued under attestation policy ``policy_hash``: isolates the condition a test
    is about."""
    document = policy.to_document()
    for condition in document["anyOf"][0]["allOf"]:
        if condition.get("claim") == "x-ms-policy-hash":
            condition["equals"] = policy_hash
    return ReleasePolicy.parse(document)


def _lax_key(env, owner, lax_authority) -> str:
    """A key whose policy is the approved one, but trusting the lax authority (and its policy's hash)."""
    url, policy_hash = lax_authority
    policy = _approved_for(env, url, simulated=True)
    return _key_with_policy(owner, _with_policy_hash(policy, policy_hash))


def _denied(cvm: KeyClient, name: str, token: str, status: int = 403) -> str:
    with pytest.raises(HttpResponseError) as refused:
        cvm.release_key(name, token)
    assert refused.value.status_code == status
    return refused.value.message


def test_release_to_the_attested_tee_opens_a_sealed_file(env, pipeline, cvm, vault_roots):
    kek_id = env["SECURETRAIN_KEK_ID"]
    kek = kek_public_key(pipeline.get_key("securetrain-kek", kek_id.rsplit("/", 1)[1]))
    sealed = io.BytesIO()
    seal(io.BytesIO(b"training rows" * 1000), sealed, kek, {"dataset": "demo"})

    tee_key = TeeKey()
    token = Attester(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]).token(tee_key)
    released = cvm.release_key("securetrain-kek", token, version=kek.kek_id.rsplit("/", 1)[1])
    private_key = unwrap_released_key(released.value, tee_key.private_key, vault_roots, expected_key_id=kek.kek_id)

    opened = io.BytesIO()
    sealed.seek(0)
    unseal(sealed, opened, KekPrivateKey(private_key))
    assert opened.getvalue() == b"training rows" * 1000


def _release(env, cvm: KeyClient, tee_key: TeeKey, **options) -> str:
    """The release response for the stack's KEK (its versioned id in env), to ``tee_key``."""
    token = Attester(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]).token(tee_key)
    return cvm.release_key("securetrain-kek", token, version=env["SECURETRAIN_KEK_ID"].rsplit("/", 1)[1], **options).value


@pytest.mark.parametrize("enc", ["CKM_RSA_AES_KEY_WRAP", "RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384"])
def test_each_wrapping_algorithm_unwraps_in_the_tee(env, cvm, enc, vault_roots):
    tee_key = TeeKey()
    released = _release(env, cvm, tee_key, algorithm=enc)
    private_key = unwrap_released_key(released, tee_key.private_key, vault_roots, expected_key_id=env["SECURETRAIN_KEK_ID"])
    assert isinstance(private_key, rsa.RSAPrivateKey)


def test_another_tee_key_cannot_open_the_release(env, cvm, vault_roots):
    released = _release(env, cvm, TeeKey())
    with pytest.raises(ReleasedKeyRejected, match="not wrapped to this TEE"):
        unwrap_released_key(released, TeeKey().private_key, vault_roots, expected_key_id=env["SECURETRAIN_KEK_ID"])


def test_a_release_signed_outside_the_trusted_roots_is_refused(env, cvm):
    tee_key = TeeKey()
    released = _release(env, cvm, tee_key)
    other_root = LocalCA.load_or_create(Path(env["SECURETRAIN_STATE_DIR"]) / "unrelated-ca").certificate
    with pytest.raises(ReleasedKeyRejected, match="trusted vault root"):
        unwrap_released_key(released, tee_key.private_key, [other_root], expected_key_id=env["SECURETRAIN_KEK_ID"])


def test_no_token(cvm):
    assert "target" in _denied(cvm, "securetrain-kek", "", status=400)


def _signed_like_the_authority(env, claims: dict, *, forged: bool) -> str:
    signing_dir = Path(env["SECURETRAIN_STATE_DIR"]) / "data" / "attestation" / "signing"
    key_file = sorted(signing_dir.glob("*.key.pem"))[-1]
    kid = key_file.name.removesuffix(".key.pem")
    key = rsa.generate_private_key(65537, 2048) if forged else serialization.load_pem_private_key(key_file.read_bytes(), None)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_expired_token(env, cvm):
    token = Attester(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]).token(TeeKey())
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(iat=claims["iat"] - 7200, nbf=claims["nbf"] - 7200, exp=int(time.time()) - 3600)
    assert "expired" in _denied(cvm, "securetrain-kek", _signed_like_the_authority(env, claims, forged=False))


def test_forged_signature(env, cvm):
    token = Attester(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]).token(TeeKey())
    claims = jwt.decode(token, options={"verify_signature": False})
    assert "signature" in _denied(cvm, "securetrain-kek", _signed_like_the_authority(env, claims, forged=True))


def test_a_token_under_another_attestation_policy(env, owner, cvm, lax_authority):
    """The lax service is trusted by this key, but its tokens were issued under another policy than the approved."""
    url, _ = lax_authority
    name = _key_with_policy(owner, _approved_for(env, url, simulated=True))
    message = _denied(cvm, name, Attester(env, url).token(TeeKey()))
    assert f"x-ms-policy-hash is '{lax_authority[1]}'" in message and env["SECURETRAIN_ATTESTATION_POLICY_HASH"] in message


def test_token_from_an_unknown_authority(env, cvm, lax_authority):
    token = Attester(env, lax_authority[0]).token(TeeKey())
    assert "not an authority of the release policy" in _denied(cvm, "securetrain-kek", token)


def test_wrong_measurement(env, owner, cvm, lax_authority):
    name = _lax_key(env, owner, lax_authority)
    token = Attester(env, lax_authority[0]).token(TeeKey(), measurement=bytes(48))
    message = _denied(cvm, name, token)
    assert "x-ms-sevsnpvm-launchmeasurement" in message and "0" * 96 in message


def test_wrong_host_data(env, owner, cvm):
    policy = _approved_for(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"], simulated=True, host_data={b"\x01" * 32})
    name = _key_with_policy(owner, policy)
    token = Attester(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]).token(TeeKey())
    assert "x-ms-sevsnpvm-hostdata" in _denied(cvm, name, token)


def test_debuggable_tee(env, owner, cvm, lax_authority):
    name = _lax_key(env, owner, lax_authority)
    token = Attester(env, lax_authority[0]).token(TeeKey(), policy=GuestPolicy.build(debug=True))
    assert "x-ms-sevsnpvm-is-debuggable is True" in _denied(cvm, name, token)


def test_simulated_platform_under_the_production_policy(env, owner, cvm):
    name = _key_with_policy(owner, _approved_for(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]))
    token = Attester(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]).token(TeeKey())
    message = _denied(cvm, name, token)
    assert "x-ms-compliance-status is 'securetrain-simulated-cvm'" in message and "azure-compliant-cvm" in message


def test_no_runtime_key(env, cvm):
    token = Attester(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]).token(TeeKey(), with_key=False)
    assert "runtime" in _denied(cvm, "securetrain-kek", token)


def test_a_key_that_is_not_exportable(env, owner, cvm):
    name = f"plain-{uuid.uuid4().hex[:10]}"
    owner.create_rsa_key(name, size=2048)
    token = Attester(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]).token(TeeKey())
    assert "not exportable" in _denied(cvm, name, token)


def test_the_pipeline_may_not_release(env, pipeline):
    token = Attester(env, env["SECURETRAIN_ATTESTATION_ENDPOINT"]).token(TeeKey())
    message = _denied(pipeline, "securetrain-kek", token)
    assert "keys/release/action" in message


def test_denials_are_in_the_access_log(env):
    lines = Path(env["SECURETRAIN_KEYVAULT_ACCESS_LOG"]).read_text().splitlines()
    decisions = {(entry["decision"], entry.get("identity")) for entry in map(json.loads, lines)}
    assert ("released", "cvm") in decisions
    assert ("release-denied", "cvm") in decisions
    assert ("denied", "pipeline") in decisions
