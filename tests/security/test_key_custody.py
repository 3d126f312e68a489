"""Who can touch a KEK: findings 2, 5 and 10 of the security review, played through the stack's real vault,
agent and storage with what a hostile Airflow holds (the ``pipeline`` and ``key-rotator`` identities, the
``pipeline`` client certificate, its environment).

- No identity outside the TEE unwraps, decrypts or releases with a KEK; the pipeline cannot create, change,
  delete or purge keys; the rotator can only make a new version; not even the data owner unwraps.
- Release policies are immutable and deleted keys cannot be purged.
- Key rotation's rewrap happens in the TEE: a rotation keeps every blob readable, and the TEE refuses to
  rewrap backwards or on a malformed request (which spends no nonce); its signed statement cannot be
  replayed or altered.
- A release response counts only when a TLS server certificate for the vault's host signs it.
- Airflow's environment carries none of the TEE's, the platform's or the data owner's material.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyClient, KeyReleasePolicy
from azure.keyvault.keys.crypto import EncryptionAlgorithm, KeyWrapAlgorithm
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securetrain.localstack.airflow_env import AIRFLOW_STACK_SETTINGS, airflow_environment, process_environment
from securetrain.core.cvm_client import CvmAccessDenied, CvmAttestationRefused, CvmClient
from securetrain.core.keyvault import (
    KekPolicyMismatch,
    KekNotProvisioned,
    challenge_resource_verified,
    check_kek,
    cryptography_client,
    kek_public_key,
    key_client,
    key_client_from_settings,
    versions_under_other_policies,
)
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.rotation import (
    RewrapNotVerified,
    RotationNotVerified,
    approved_tee_validator,
    rewrap_in_tee,
    verify_rewrap_answer,
    verify_rotation,
)
from securetrain.core.sealed import KekPrivateKey, SealedReader, inspect, seal
from securetrain.core.skr import ReleasedKeyRejected, open_release_response
from securetrain.localstack import StackLayout, data_owner
from securetrain.localstack.services.identity import stack_identities
from securetrain.localstack.services.keyvault import master_key_path
from securetrain.tee.tee_services import attester
from securetrain.core.storage import BlobStore
from tests.jobs import in_the_tee, released_kek
from securetrain.tee.attest import TeeKey

pytestmark = pytest.mark.integration

KEK = "securetrain-kek"
#: What a key's private half does; only the TEE's identity (release) may do any of it.
PRIVATE_USES = ("unwrap", "decrypt", "release")


@pytest.fixture(scope="module")
def env(local_stack) -> dict[str, str]:
    return local_stack.env


@pytest.fixture(scope="module")
def policy(env) -> bytes:
    return Path(env["SECURETRAIN_RELEASE_POLICY"]).read_bytes()


@pytest.fixture(scope="module")
def pipeline(local_stack) -> CvmClient:
    with local_stack.settings().agent() as client:
        yield client


def tee_token(pipeline: CvmClient) -> str:
    """A genuine attestation token, as Airflow gets one: the TEE attests a throwaway key for its nonce."""
    return pipeline.attest(secrets.token_urlsafe(24)).token


def try_private_use(local_stack, identity: str, use: str, token: str) -> HttpResponseError:
    """``identity`` unwraps, decrypts with, or has released the stack's KEK; the vault's refusal."""
    kek_id = local_stack.env["SECURETRAIN_KEK_ID"]
    with pytest.raises(HttpResponseError) as refused:
        if use == "release":
            with key_client_from_settings(local_stack.settings(identity)) as keys:
                keys.release_key(KEK, token, version=kek_id.rsplit("/", 1)[1])
        else:
            credential = local_stack.credential(identity)
            with cryptography_client(kek_id, credential, ca_bundle=local_stack.ca_bundle) as crypto:
                if use == "unwrap":
                    crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"\0" * 384)
                else:
                    crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, b"\0" * 384)
    return refused.value


@pytest.mark.parametrize("identity", ["pipeline", "key-rotator", "data-owner"])
def test_no_identity_outside_the_tee_unwraps_decrypts_or_releases(local_stack, env, pipeline, identity) -> None:
    """Finding 2: Airflow's identities (and the data owner's) get 403 for every use of the KEK's private half,
    even with a genuine attestation token in hand."""
    token = tee_token(pipeline)
    for use in PRIVATE_USES:
        refused = try_private_use(local_stack, identity, use, token)
        assert refused.status_code == 403, (identity, use, refused.message)
        assert f"Microsoft.KeyVault/vaults/keys/{use}/action" in refused.message, (identity, use)
    lines = [json.loads(line) for line in Path(env["SECURETRAIN_KEYVAULT_ACCESS_LOG"]).read_text().splitlines()]
    denied = {line["operation"] for line in lines if line["decision"] == "denied" and line.get("identity") == identity}
    assert {f"Microsoft.KeyVault/vaults/keys/{use}/action" for use in PRIVATE_USES} <= denied
    assert not any(line["decision"] == "released" and line.get("identity") == identity for line in lines)


def management_attempts(keys: KeyClient, policy: bytes) -> dict[str, Any]:
    """What an identity that must not manage keys tries against the stack's KEK."""
    loosened = json.loads(policy)
    loosened["anyOf"][0]["allOf"] = loosened["anyOf"][0]["allOf"][:1]  # drop every condition but one
    return {
        "create an exportable key under its own policy": lambda: keys.create_rsa_key(
            f"mine-{uuid.uuid4().hex[:8]}", size=2048, exportable=True,
            release_policy=KeyReleasePolicy(json.dumps(loosened).encode()),
        ),
        "loosen the KEK's release policy": lambda: keys.update_key_properties(
            KEK, release_policy=KeyReleasePolicy(json.dumps(loosened).encode())
        ),
        "disable the KEK": lambda: keys.update_key_properties(KEK, enabled=False),
        "delete the KEK": lambda: keys.begin_delete_key(KEK),
        "purge the KEK": lambda: keys.purge_deleted_key(KEK),
    }  # fmt: skip


@pytest.mark.parametrize("identity", ["pipeline", "key-rotator"])
def test_airflows_identities_cannot_create_change_delete_or_purge_keys(local_stack, env, policy, identity) -> None:
    """Finding 5: neither Airflow identity creates keys, changes a policy, deletes or purges; the KEK is intact."""
    with key_client_from_settings(local_stack.settings(identity)) as keys:
        before = keys.get_key(KEK)
        for attempt, act in management_attempts(keys, policy).items():
            with pytest.raises(HttpResponseError) as refused:
                act()
            assert refused.value.status_code == 403, (identity, attempt, refused.value.message)
        after = keys.get_key(KEK)
    assert after.id == before.id and after.properties.enabled
    assert after.properties.release_policy.encoded_policy == before.properties.release_policy.encoded_policy


def test_the_pipeline_cannot_even_make_a_new_version(local_stack, env) -> None:
    with key_client_from_settings(local_stack.settings("pipeline")) as keys, pytest.raises(HttpResponseError) as refused:
        keys.rotate_key(KEK)
    assert refused.value.status_code == 403 and "keys/rotate/action" in refused.value.message


def test_the_kek_policy_is_immutable_even_for_its_owner(local_stack, env, policy) -> None:
    with key_client_from_settings(local_stack.settings("data-owner")) as keys:
        kek = keys.get_key(KEK)
        assert kek.properties.release_policy.immutable is True
        for attempt in (management_attempts(keys, policy)["loosen the KEK's release policy"],
                        lambda: keys.update_key_properties(KEK, release_policy=KeyReleasePolicy(policy, immutable=False))):  # fmt: skip
            with pytest.raises(HttpResponseError) as refused:
                attempt()
            assert refused.value.status_code == 403 and "immutable" in refused.value.message
        assert keys.get_key(KEK).properties.release_policy.encoded_policy == kek.properties.release_policy.encoded_policy


def test_a_deleted_key_cannot_be_purged_by_anyone(local_stack, env, policy) -> None:
    """Purging the KEK would destroy every dataset sealed for it; with purge protection nobody can."""
    name = f"doomed-{uuid.uuid4().hex[:8]}"
    with key_client_from_settings(local_stack.settings("data-owner")) as owner:
        owner.create_rsa_key(name, size=2048, exportable=True, release_policy=KeyReleasePolicy(policy, immutable=True))
        owner.begin_delete_key(name).result()
        with pytest.raises(HttpResponseError) as refused:
            owner.purge_deleted_key(name)  # the owner's role allows purging; the vault's protection does not
        assert refused.value.status_code == 403 and "purge protection is enabled" in refused.value.message
        for identity in ("pipeline", "key-rotator"):
            with key_client_from_settings(local_stack.settings(identity)) as keys, pytest.raises(HttpResponseError) as refused:
                keys.purge_deleted_key(name)
            assert refused.value.status_code == 403 and "keys/purge/action" in refused.value.message, identity
        owner.begin_recover_deleted_key(name).result()
        assert owner.get_key(name).name == name


def test_the_pipeline_only_checks_the_kek_and_says_who_must_fix_it(local_stack, env, policy) -> None:
    approved = ReleasePolicy.parse(policy)
    with key_client_from_settings(local_stack.settings("pipeline")) as keys:
        assert check_kek(keys, KEK, approved).id == env["SECURETRAIN_KEK_ID"]
        with pytest.raises(KekNotProvisioned, match="data owner creates it"):
            check_kek(keys, f"missing-{uuid.uuid4().hex[:8]}", approved)
    name = f"mutable-{uuid.uuid4().hex[:8]}"
    with key_client_from_settings(local_stack.settings("data-owner")) as owner:
        owner.create_rsa_key(name, size=2048, exportable=True, release_policy=KeyReleasePolicy(policy, immutable=False))
    with key_client_from_settings(local_stack.settings("pipeline")) as keys, pytest.raises(KekPolicyMismatch, match="mutable.*data owner"):
        check_kek(keys, name, approved)


# --- finding 2: rotation rewraps inside the TEE -------------------------------------------------------


def seal_to(kek, data: bytes, context: dict[str, str]) -> bytes:
    out = io.BytesIO()
    seal(io.BytesIO(data), out, kek, context, segment_size=65536)
    return out.getvalue()


def opened(store: BlobStore, container: str, blob: str, kek: KekPrivateKey) -> bytes:
    with store.open_read(container, blob) as source:
        return b"".join(bytes(segment) for segment in SealedReader(source, kek).segments())


@pytest.fixture(scope="module")
def approved_tee(local_stack, env, policy):
    """How Airflow checks a token from the TEE: the attestation service's signature, then the approved policy."""
    return approved_tee_validator(env["SECURETRAIN_ATTESTATION_ENDPOINT"], str(local_stack.ca_bundle), ReleasePolicy.parse(policy))


@pytest.fixture(scope="module")
def rotated(local_stack, env, policy, store, pipeline, approved_tee) -> dict[str, Any]:
    """A KEK of the module's own with sealed blobs in a container of its own, rotated the way key rotation
    does it: the rotator makes a new version, the stack's TEE rewraps."""
    name = f"kek-{uuid.uuid4().hex[:8]}"
    with key_client_from_settings(local_stack.settings("data-owner")) as owner:
        first = kek_public_key(owner.create_rsa_key(name, size=2048, exportable=True,
                                                    release_policy=KeyReleasePolicy(policy, immutable=True)))  # fmt: skip
    container = f"rot-{uuid.uuid4().hex[:8]}"
    store.ensure_container(container)
    plaintexts = {f"part-{i}.sealed": bytes([i]) * (150_000 + i) for i in range(2)}
    sealed = {blob: seal_to(first, data, {"part": blob}) for blob, data in plaintexts.items()}
    for blob, body in sealed.items():
        store.upload_stream(container, blob, io.BytesIO(body), length=len(body))
    time.sleep(1.1)  # Key Vault's creation times are whole seconds: the new version must be the newer one
    with key_client_from_settings(local_stack.settings("key-rotator")) as rotator:
        second = kek_public_key(rotator.rotate_key(name))
    statement = rewrap_in_tee(pipeline, second.kek_id, [container], approved_tee)
    return {"name": name, "first": first, "second": second, "container": container, "plaintexts": plaintexts,
            "sealed": sealed, "statement": statement}  # fmt: skip


def test_rotation_rewraps_in_the_tee_and_the_data_still_opens(local_stack, store, rotated) -> None:
    container, second, statement = rotated["container"], rotated["second"], rotated["statement"]
    names = {f"{container}/{blob}" for blob in rotated["plaintexts"]}
    # The TEE's signed statement says which data keys it checked and what it rewrote.
    assert set(statement["rewrapped"]) == names and set(statement["dek_checked"]) == names
    assert set(statement["released_versions"]) == {second.kek_id, rotated["first"].kek_id}
    assert statement["refused"] == {} and statement["changed_meanwhile"] == []
    summary = verify_rotation(store, second, statement, [container])
    assert summary["verified"] == 2 and summary["dek_checked_in_tee"] == 2
    new_kek = released_kek(local_stack, second.kek_id)  # what a TEE gets for the new version
    for blob, plaintext in rotated["plaintexts"].items():
        body = b"".join(store.download_chunks(container, blob))
        header = inspect(io.BytesIO(body))
        assert header.key.kek_id == second.kek_id and header.key.kek_thumbprint == second.thumbprint
        old = rotated["sealed"][blob]
        assert body[header.size :] == old[inspect(io.BytesIO(old)).size :]  # the data was not re-encrypted
        assert opened(store, container, blob, new_kek) == plaintext


def test_a_second_rewrap_resumes_and_checks_every_key_again(store, pipeline, approved_tee, rotated) -> None:
    container = rotated["container"]
    statement = rewrap_in_tee(pipeline, rotated["second"].kek_id, [container], approved_tee)
    assert statement["rewrapped"] == [] and len(statement["already_current"]) == 2
    assert sorted(statement["dek_checked"]) == sorted(statement["already_current"])


def test_the_tee_does_not_rewrap_backwards(store, pipeline, approved_tee, rotated) -> None:
    """Airflow names the old version as the 'new' one: a rotation away from a retired key, undone."""
    container = rotated["container"]
    before = {blob: b"".join(store.download_chunks(container, blob)) for blob in rotated["plaintexts"]}
    with pytest.raises(CvmAttestationRefused, match="RewrapRefused.*created after"):
        rewrap_in_tee(pipeline, rotated["first"].kek_id, [container], approved_tee)
    assert {blob: b"".join(store.download_chunks(container, blob)) for blob in rotated["plaintexts"]} == before


def test_blobs_of_a_version_no_approved_tee_opens_stay_and_are_reported(local_stack, env, policy, store, pipeline, approved_tee) -> None:
    """The approved policy changed (a new workload): the owner made a new version, and the blobs of the old
    one cannot be rewrapped by the new TEE. They are left untouched and named, and only because that
    version's policy is not the approved one does the check accept them where they are."""
    previous = json.loads(policy)
    for condition in previous["anyOf"][0]["allOf"]:
        if condition["claim"] == "x-ms-sevsnpvm-hostdata":
            condition["equals"] = "01" * 32  # the workload the data owner approved before
    name, container = f"kek-{uuid.uuid4().hex[:8]}", f"old-{uuid.uuid4().hex[:8]}"
    with key_client_from_settings(local_stack.settings("data-owner")) as owner:
        old = kek_public_key(owner.create_rsa_key(name, size=2048, exportable=True,
                                                  release_policy=KeyReleasePolicy(json.dumps(previous).encode(), immutable=True)))  # fmt: skip
        time.sleep(1.1)
        new = kek_public_key(owner.create_rsa_key(name, size=2048, exportable=True,
                                                  release_policy=KeyReleasePolicy(policy, immutable=True)))  # fmt: skip
    store.ensure_container(container)
    body = seal_to(old, b"sealed for the previous workload" * 100, {"part": "0"})
    store.upload_stream(container, "part-0.sealed", io.BytesIO(body), length=len(body))
    statement = rewrap_in_tee(pipeline, new.kek_id, [container], approved_tee)
    assert statement["rewrapped"] == [] and list(statement["unreleasable"]) == [f"{container}/part-0.sealed"]
    assert "x-ms-sevsnpvm-hostdata" in statement["unreleasable"][f"{container}/part-0.sealed"]
    assert b"".join(store.download_chunks(container, "part-0.sealed")) == body
    with pytest.raises(RotationNotVerified, match="still wrapped for"):
        verify_rotation(store, new, statement, [container])
    with key_client_from_settings(local_stack.settings("pipeline")) as keys:
        other = versions_under_other_policies(keys, name, ReleasePolicy.parse(policy))
    assert other == {old.kek_id}
    summary = verify_rotation(store, new, statement, [container], other_policies=other)
    assert summary["left_under_another_policy"] == [f"{container}/part-0.sealed"]


def post_rewrap(env, body: bytes) -> requests.Response:
    """``POST /v1/rewraps`` with any body, over mutual TLS with the pipeline's certificate."""
    return requests.post(
        f"{env['SECURETRAIN_CVM_ENDPOINT']}/v1/rewraps", data=body, headers={"Content-Type": "application/json"},
        cert=(env["SECURETRAIN_CVM_PIPELINE_CERT"], env["SECURETRAIN_CVM_PIPELINE_KEY"]),
        verify=env["SECURETRAIN_CA_BUNDLE"], timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    "change,field",
    [
        ({"kek_id": "https://127.0.0.1:1/keys/kek"}, "kek_id"),  # no version
        ({"kek_id": "https://127.0.0.1:1/secrets/kek/" + "0" * 32}, "kek_id"),
        ({"containers": ["Not_A_Container"]}, "containers"),
        ({"containers": []}, "containers"),
        ({"containers": "datasets"}, "containers"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_malformed_rewrap_is_refused_before_any_nonce_is_spent(env, pipeline, rotated, change, field) -> None:
    nonce = secrets.token_urlsafe(24)
    body = {"kek_id": rotated["second"].kek_id, "containers": [rotated["container"]], "nonce": nonce, **change}
    refused = post_rewrap(env, json.dumps(body).encode())
    assert refused.status_code == 400 and refused.json()["error"]["field"] == field, refused.text
    # The same nonce still attests: the refused request spent nothing.
    assert pipeline.rewrap(kek_id=rotated["second"].kek_id, containers=[rotated["container"]], nonce=nonce)


def test_deeply_nested_json_is_a_400(env) -> None:
    response = post_rewrap(env, b'{"kek_id": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")
    assert response.status_code == 400 and response.json()["error"]["code"] == "RewrapRequestInvalid", response.text


def test_the_monitor_cannot_ask_for_a_rewrap(local_stack, env, rotated) -> None:
    with local_stack.agent_client("monitor") as monitor, pytest.raises(CvmAccessDenied):
        monitor.rewrap(kek_id=rotated["second"].kek_id, containers=[rotated["container"]], nonce=secrets.token_urlsafe(24))


def test_a_rewrap_statement_cannot_be_replayed_or_altered(pipeline, approved_tee, rotated) -> None:
    kek_id, containers = rotated["second"].kek_id, [rotated["container"]]
    nonce = secrets.token_urlsafe(24)
    answer = pipeline.rewrap(kek_id=kek_id, containers=containers, nonce=nonce)
    check = {"kek_id": kek_id, "containers": containers, "validate": approved_tee}
    assert verify_rewrap_answer(answer, nonce=nonce, **check)["kek_id"] == kek_id
    with pytest.raises(RewrapNotVerified, match="nonce"):
        verify_rewrap_answer(answer, nonce=secrets.token_urlsafe(24), **check)  # an old answer, replayed
    forged = {**answer, "statement": {**answer["statement"], "refused": {}, "rewrapped": ["datasets/everything"]}}
    with pytest.raises(RewrapNotVerified, match="not signed by the attested TEE"):
        verify_rewrap_answer(forged, nonce=nonce, **check)


# --- the release response's signer ------------------------------------------------------------------


def test_a_release_signed_by_anything_but_the_vaults_server_certificate_is_refused(local_stack, env, pipeline) -> None:
    """The pipeline's client certificate chains to the same CA the TEE trusts; it must not vouch for a key."""
    tee_key = TeeKey()
    kek_id = env["SECURETRAIN_KEK_ID"]
    with in_the_tee(local_stack) as (settings, evidence):  # the TEE's own attester, as the agent builds it
        token = attester(settings, evidence).attest(tee_key, secrets.token_urlsafe(24))
        with key_client(env["SECURETRAIN_KEYVAULT_URL"], settings.credential(), ca_bundle=settings.ca_bundle) as cvm:
            genuine = cvm.release_key(KEK, token.raw, version=kek_id.rsplit("/", 1)[1]).value
    roots = x509.load_pem_x509_certificates(Path(env["SECURETRAIN_KEYVAULT_RELEASE_ROOT"]).read_bytes())
    assert open_release_response(genuine, tee_key.private_key, roots, expected_key_id=kek_id).kid == kek_id

    # Airflow re-signs the genuine payload with the key it holds (its client certificate for the agent).
    certificate = x509.load_pem_x509_certificate(Path(env["SECURETRAIN_CVM_PIPELINE_CERT"]).read_bytes())
    key = serialization.load_pem_private_key(Path(env["SECURETRAIN_CVM_PIPELINE_KEY"]).read_bytes(), None)
    x5c = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]
    payload = jwt.decode(genuine, options={"verify_signature": False})
    forged = jwt.encode(payload, key, algorithm="ES256", headers={"x5c": x5c})
    with pytest.raises(ReleasedKeyRejected, match="not a TLS server certificate for the vault's host 127.0.0.1"):
        open_release_response(forged, tee_key.private_key, roots, expected_key_id=kek_id)


def test_the_challenge_resource_is_verified_except_for_loopback_vaults() -> None:
    assert challenge_resource_verified("https://contoso.vault.azure.net/keys/kek/" + "0" * 32)
    assert challenge_resource_verified("https://keyvault:10800")
    for loopback in ("https://127.0.0.1:10800", "https://localhost:10800/keys/k", "https://[::1]:10800", "https://127.1.2.3"):
        assert not challenge_resource_verified(loopback), loopback


# --- finding 10: what Airflow's environment carries --------------------------------------------------


def test_airflows_environment_carries_no_tee_platform_or_owner_material(local_stack, monkeypatch) -> None:
    stack, layout = local_stack.env, StackLayout(local_stack.state_dir)
    identities = stack_identities(layout)
    withheld = {
        "the TEE's managed-identity header": identities["cvm"].identity_header,
        "the simulated SNP platform's keys": stack["SECURETRAIN_SNP_PLATFORM_DIR"],
        "the data owner's client secret": identities["data-owner"].client_secret,
        "the data owner's settings": str(local_stack.settings_file("data-owner")),
        "the data owner's signing key": str(data_owner.signing_key_path(layout)),
        "the vault's master key": str(master_key_path(layout)),
        "the monitor's client key": stack["SECURETRAIN_CVM_MONITOR_KEY"],
    }
    # A shell that sourced all of stack.env before starting Airflow: those settings are withheld too.
    for name, value in stack.items():
        monkeypatch.setenv(name, value)
    for environment in (airflow_environment(local_stack.state_dir), process_environment(local_stack.state_dir)):
        text = json.dumps(environment)
        for what, value in withheld.items():
            assert value not in text, f"Airflow's environment carries {what}"
        assert {name for name in environment if name in stack} <= set(AIRFLOW_STACK_SETTINGS)
        # What Airflow does use is there: its connections and the settings it reads.
        assert {"AIRFLOW_CONN_SECURETRAIN_KEYVAULT", "AIRFLOW_CONN_SECURETRAIN_KEYVAULT_ROTATOR", "AIRFLOW_CONN_SECURETRAIN_CVM",
                "AIRFLOW_CONN_SECURETRAIN_STORAGE", "SECURETRAIN_RELEASE_POLICY"} <= environment.keys()  # fmt: skip
    signing_in = {json.loads(environment[f"AIRFLOW_CONN_{conn}"])["login"]
                  for conn in ("SECURETRAIN_KEYVAULT", "SECURETRAIN_KEYVAULT_ROTATOR")}  # fmt: skip
    assert signing_in == {identities["pipeline"].client_id, identities["key-rotator"].client_id}
