"""The Key Vault stand-in's keys API through the real ``KeyClient`` / ``CryptographyClient``, with its
roles, its authentication failures, its error shapes, purge protection, and its keys surviving a restart.

Keys are made by the ``data-owner`` identity (the only stack identity that may create them). No stack
identity may decrypt or unwrap, so the vault's cryptographic operations are exercised by an identity this
module adds, as an operator would, with the built-in Key Vault Crypto User role.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from pathlib import Path

import jwt
import pytest
import requests
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import ApiVersion, KeyClient, KeyReleasePolicy
from azure.keyvault.keys.crypto import EncryptionAlgorithm, KeyWrapAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.keyvault import cryptography_client, key_client, key_client_from_settings
from securetrain.core.release_policy import ReleasePolicy
from securetrain.localstack import up
from securetrain.localstack.identities import LOCAL_TENANT, LocalIdentity, application_credential
from securetrain.localstack.services.identity import identities_dir, stack_identities
from securetrain.localstack.standins.identity.app import token_issuer
from securetrain.localstack.services.keyvault import roles_path
from securetrain.localstack.process import PidRecord, stop_process
from tests.open_connections import connections_to

pytestmark = pytest.mark.integration


class FixedToken:
    """A credential that presents one given token: how a test shows the vault a token it must refuse."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def env(local_stack) -> dict[str, str]:
    return local_stack.env


@pytest.fixture(scope="module")
def officer(local_stack) -> KeyClient:
    with key_client_from_settings(local_stack.settings("data-owner")) as client:
        yield client


def test_a_key_client_from_settings_closes_the_credential_made_for_it(local_stack) -> None:
    settings = local_stack.settings("data-owner")
    authority = str(settings.authority_host)
    earlier = connections_to(authority)
    with key_client_from_settings(settings) as client:
        client.get_key("securetrain-kek")
        assert connections_to(authority) - earlier, "the credential kept no connection to the identity service"
    assert not connections_to(authority) - earlier


def _assign(layout, identity: LocalIdentity, role: str) -> None:
    """Add a role assignment, as an operator would; the vault reads the assignments per decision."""
    path = roles_path(layout)
    document = json.loads(path.read_text())
    entry = {"principalId": identity.object_id, "principalName": identity.name, "role": role}
    if entry not in document["assignments"]:
        document["assignments"].append(entry)
        path.write_text(json.dumps(document))


@pytest.fixture(scope="module")
def crypto_user_identity(local_stack) -> LocalIdentity:
    """A service principal of the test's own with Key Vault Crypto User (decrypt, unwrap, ...)."""
    layout = local_stack.config.layout
    identity_file = identities_dir(layout) / "test-crypto-user.json"
    identity = LocalIdentity.load_or_create(identity_file, "test-crypto-user")
    original = roles_path(layout).read_text()
    _assign(layout, identity, "Key Vault Crypto User")
    try:
        yield identity
    finally:
        roles_path(layout).write_text(original)
        identity_file.unlink()


@pytest.fixture(scope="module")
def crypto_user(local_stack, crypto_user_identity) -> TokenCredential:
    return application_credential(crypto_user_identity, local_stack.env["SECURETRAIN_IDENTITY_ENDPOINT"], local_stack.ca_bundle)


def _policy(env) -> KeyReleasePolicy:
    return KeyReleasePolicy(Path(env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())


def _name() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def test_create_get_list_rotate_update_delete(env, officer):
    name = _name()
    created = officer.create_rsa_key(name, size=2048, exportable=True, release_policy=_policy(env), tags={"t": "1"})
    assert created.key_type == "RSA" and created.properties.exportable and created.properties.tags == {"t": "1"}
    assert ReleasePolicy.parse(created.properties.release_policy.encoded_policy)
    assert officer.get_key(name).id == created.id
    assert officer.get_key(name, created.properties.version).id == created.id

    rotated = officer.rotate_key(name)
    assert rotated.properties.version != created.properties.version and rotated.properties.exportable
    assert officer.get_key(name).id == rotated.id
    versions = {p.version for p in officer.list_properties_of_key_versions(name)}
    assert versions == {created.properties.version, rotated.properties.version}
    assert name in {p.name for p in officer.list_properties_of_keys()}

    expires = datetime.datetime.fromtimestamp(int(time.time()) + 3600, datetime.UTC)
    updated = officer.update_key_properties(name, created.properties.version, enabled=False, expires_on=expires)
    assert updated.properties.enabled is False and updated.properties.expires_on == expires

    deleted = officer.begin_delete_key(name).result()
    assert deleted.recovery_id.endswith(f"/deletedkeys/{name}")
    assert deleted.properties.recovery_level == "Recoverable"  # soft delete with purge protection
    with pytest.raises(ResourceNotFoundError):
        officer.get_key(name)
    assert officer.get_deleted_key(name).name == name
    officer.begin_recover_deleted_key(name).result()
    assert officer.get_key(name).id == rotated.id
    officer.begin_delete_key(name).result()
    # Purge protection: nobody, the key's owner included, destroys a deleted key before its retention ends.
    with pytest.raises(HttpResponseError) as purge:
        officer.purge_deleted_key(name)
    assert purge.value.status_code == 403 and "purge protection is enabled" in purge.value.message
    assert officer.get_deleted_key(name).name == name


@pytest.mark.parametrize("size,hsm", [(3072, True), (4096, False)])
def test_key_sizes_and_hsm(officer, size, hsm):
    key = officer.create_rsa_key(_name(), size=size, hardware_protected=hsm)
    assert key.key_type == ("RSA-HSM" if hsm else "RSA") and len(key.key.n) * 8 == size


@pytest.mark.parametrize("api_version", [ApiVersion.V7_4, ApiVersion.V7_6, ApiVersion.V2025_07_01])
def test_api_versions(local_stack, env, api_version):
    client = KeyClient(
        env["SECURETRAIN_KEYVAULT_URL"], local_stack.credential(), api_version=api_version,
        connection_verify=env["SECURETRAIN_CA_BUNDLE"], verify_challenge_resource=False,
    )  # fmt: skip
    with client:
        assert client.get_key("securetrain-kek").name == "securetrain-kek"


@pytest.mark.parametrize("algorithm", [EncryptionAlgorithm.rsa_oaep_256, EncryptionAlgorithm.rsa_oaep])
def test_crypto_operations(env, officer, crypto_user, algorithm):
    key = officer.create_rsa_key(_name(), size=2048)
    with cryptography_client(key.id, crypto_user, ca_bundle=env["SECURETRAIN_CA_BUNDLE"]) as crypto:
        encrypted = crypto.encrypt(algorithm, b"data key")
        assert crypto.decrypt(algorithm, encrypted.ciphertext).plaintext == b"data key"
        wrapped = crypto.wrap_key(KeyWrapAlgorithm(algorithm.value), b"k" * 32)
        assert crypto.unwrap_key(KeyWrapAlgorithm(algorithm.value), wrapped.encrypted_key).key == b"k" * 32


def _raw(env, credential, method: str, path: str, body=None, api_version: str = "7.6") -> requests.Response:
    token = credential.get_token("https://vault.azure.net/.default").token
    return requests.request(
        method, f"{env['SECURETRAIN_KEYVAULT_URL']}{path}", params={"api-version": api_version}, json=body,
        headers={"Authorization": f"Bearer {token}"}, verify=env["SECURETRAIN_CA_BUNDLE"], timeout=10,
    )  # fmt: skip


def test_server_side_encrypt_and_wrap(env, officer, crypto_user):
    # CryptographyClient encrypts and wraps locally with the public key; the vault's own endpoints too must work.
    key = officer.create_rsa_key(_name(), size=2048)
    for operation, inverse in (("encrypt", "decrypt"), ("wrapkey", "unwrapkey")):
        out = _raw(env, crypto_user, "POST", f"/keys/{key.name}/{key.properties.version}/{operation}",
                   {"alg": "RSA-OAEP-256", "value": "c2VjcmV0"})  # fmt: skip
        assert out.status_code == 200, out.text
        back = _raw(env, crypto_user, "POST", f"/keys/{key.name}/{key.properties.version}/{inverse}",
                    {"alg": "RSA-OAEP-256", "value": out.json()["value"]})  # fmt: skip
        assert back.json()["value"] == "c2VjcmV0"


def test_errors_have_key_vault_shapes(local_stack, env, officer):
    with pytest.raises(ResourceNotFoundError) as missing:
        officer.get_key("no-such-key")
    assert missing.value.error.code == "KeyNotFound"
    with pytest.raises(ResourceNotFoundError):
        officer.get_key("securetrain-kek", "0" * 32)
    with pytest.raises(HttpResponseError) as bad_version:
        officer.get_key("securetrain-kek", "not-a-version")
    assert bad_version.value.status_code == 400 and bad_version.value.error.code == "BadParameter"
    with pytest.raises(HttpResponseError) as bad_type:
        officer.create_ec_key(_name())
    assert bad_type.value.status_code == 400 and "not supported" in bad_type.value.message
    with pytest.raises(HttpResponseError) as bad_size:
        officer.create_rsa_key(_name(), size=1024)
    assert bad_size.value.status_code == 400
    with pytest.raises(HttpResponseError) as no_policy:
        officer.create_rsa_key(_name(), exportable=True)
    assert "release policy" in no_policy.value.message
    with pytest.raises(HttpResponseError) as bad_policy:
        officer.create_rsa_key(_name(), exportable=True, release_policy=KeyReleasePolicy(b'{"version": "1.0.0"}'))
    assert bad_policy.value.status_code == 400 and "anyOf" in bad_policy.value.message

    credential = local_stack.credential("data-owner")
    malformed = _raw(env, credential, "POST", f"/keys/{_name()}/create", None)
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "BadParameter"
    old_api = _raw(env, credential, "GET", "/keys/securetrain-kek/", api_version="1999-01-01")
    assert old_api.status_code == 400 and "not recognized" in old_api.json()["error"]["message"]


def test_an_immutable_policy_cannot_change(env, officer):
    policy = Path(env["SECURETRAIN_RELEASE_POLICY"]).read_bytes()
    key = officer.create_rsa_key(
        _name(), size=2048, exportable=True, release_policy=KeyReleasePolicy(policy, immutable=True)
    )
    document = json.loads(policy)
    document["anyOf"][0]["allOf"] = document["anyOf"][0]["allOf"][:1]
    looser = json.dumps(document).encode()
    for attempt in (KeyReleasePolicy(looser, immutable=True), KeyReleasePolicy(policy, immutable=False)):
        with pytest.raises(HttpResponseError) as refused:
            officer.update_key_properties(key.name, release_policy=attempt)
        assert refused.value.status_code == 403 and "immutable" in refused.value.message
    assert officer.get_key(key.name).properties.release_policy.immutable is True
    assert officer.update_key_properties(key.name, tags={"ok": "yes"}).properties.tags == {"ok": "yes"}
    # Another policy is another version, made by the key's owner; the old version keeps its own.
    rotated = officer.rotate_key(key.name)
    assert rotated.properties.release_policy.immutable is True
    assert rotated.properties.release_policy.encoded_policy == officer.get_key(key.name, key.properties.version).properties.release_policy.encoded_policy
    replaced = officer.create_rsa_key(key.name, size=2048, exportable=True,
                                      release_policy=KeyReleasePolicy(looser, immutable=True))  # fmt: skip
    assert replaced.properties.version not in (key.properties.version, rotated.properties.version)
    assert json.loads(officer.get_key(key.name, key.properties.version).properties.release_policy.encoded_policy) == json.loads(policy)


def test_roles_limit_each_identity(local_stack, env, officer, tee_settings):
    # The attacks on these limits are in tests/security/test_key_custody.py; here, that each role works.
    cvm_keys = key_client(env["SECURETRAIN_KEYVAULT_URL"], tee_settings.credential(), ca_bundle=local_stack.ca_bundle)
    with cvm_keys, pytest.raises(HttpResponseError) as read:
        cvm_keys.get_key("securetrain-kek")
    assert read.value.status_code == 403 and "keys/read" in read.value.message
    with key_client_from_settings(local_stack.settings("key-rotator")) as rotator, pytest.raises(HttpResponseError) as create:
        rotator.create_rsa_key(_name())
    assert create.value.status_code == 403 and "keys/create/action" in create.value.message
    kek = officer.get_key("securetrain-kek")
    credential = local_stack.credential("data-owner")
    with cryptography_client(kek.id, credential, ca_bundle=env["SECURETRAIN_CA_BUNDLE"]) as crypto:
        with pytest.raises(HttpResponseError) as unwrap:
            crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"\0" * 384)
    assert unwrap.value.status_code == 403 and "keys/unwrap/action" in unwrap.value.message


def _identity_token(local_stack, *, expired: bool = False, forged: bool = False, issuer: str | None = None,
                    audience: str = "https://vault.azure.net") -> str:  # fmt: skip
    signing = local_stack.layout.data_dir("identity") / "signing"
    key_file = sorted(signing.glob("*.key.pem"))[-1]
    key = rsa.generate_private_key(65537, 2048) if forged else serialization.load_pem_private_key(key_file.read_bytes(), None)
    pipeline = stack_identities(local_stack.layout)["pipeline"]
    now = int(time.time()) - (7200 if expired else 0)
    claims = {"iss": issuer or token_issuer(LOCAL_TENANT), "aud": audience, "iat": now, "nbf": now, "exp": now + 3600,
              "oid": pipeline.object_id, "name": "pipeline"}  # fmt: skip
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": key_file.name.removesuffix(".key.pem")})


@pytest.mark.parametrize(
    "token_kind,reason",
    [("expired", "expired"), ("forged", "signature"), ("audience", "audience"), ("issuer", "not issued by")],
)
def test_bad_access_tokens_get_401(local_stack, env, token_kind, reason):
    token = _identity_token(
        local_stack, expired=token_kind == "expired", forged=token_kind == "forged",
        audience="https://storage.azure.com" if token_kind == "audience" else "https://vault.azure.net",
        issuer="https://sts.windows.net/another-tenant/" if token_kind == "issuer" else None,
    )  # fmt: skip
    with key_client(env["SECURETRAIN_KEYVAULT_URL"], FixedToken(token), ca_bundle=env["SECURETRAIN_CA_BUNDLE"]) as client:
        with pytest.raises(ClientAuthenticationError) as refused:
            client.get_key("securetrain-kek")
    assert refused.value.status_code == 401 and reason in refused.value.message
    # The well-signed token with the right audience is accepted: the refusals above are about their fault.
    good = _identity_token(local_stack)
    with key_client(env["SECURETRAIN_KEYVAULT_URL"], FixedToken(good), ca_bundle=env["SECURETRAIN_CA_BUNDLE"]) as client:
        assert client.get_key("securetrain-kek").name == "securetrain-kek"


def test_a_request_without_a_token_gets_the_challenge(env):
    response = requests.get(
        f"{env['SECURETRAIN_KEYVAULT_URL']}/keys", params={"api-version": "7.6"}, verify=env["SECURETRAIN_CA_BUNDLE"]
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == "Unauthorized"
    challenge = response.headers["WWW-Authenticate"]
    assert f'authorization="{env["SECURETRAIN_IDENTITY_ENDPOINT"]}/{LOCAL_TENANT}"' in challenge
    assert 'resource="https://vault.azure.net"' in challenge


def test_keys_survive_a_restart_and_are_encrypted_at_rest(local_stack, env, officer, crypto_user, crypto_user_identity):
    key = officer.create_rsa_key(_name(), size=2048)
    with cryptography_client(key.id, crypto_user, ca_bundle=env["SECURETRAIN_CA_BUNDLE"]) as crypto:
        ciphertext = crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"kept").ciphertext
    layout = local_stack.config.layout
    record = PidRecord.read(layout.pid_file("keyvault"))
    assert stop_process(record.process)
    up(local_stack.config)  # restarts only the service that died (and rewrites the stack's role assignments)
    assert officer.get_key(key.name).id == key.id
    _assign(layout, crypto_user_identity, "Key Vault Crypto User")
    with cryptography_client(key.id, crypto_user, ca_bundle=env["SECURETRAIN_CA_BUNDLE"]) as crypto:
        assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ciphertext).plaintext == b"kept"
    stored = (layout.data_dir("keyvault") / "keys" / f"{key.name}.json").read_bytes()
    assert b"PRIVATE KEY" not in stored and b"sealed_private" in stored
    master = layout.secrets_dir / "keyvault-master-key"
    assert os.stat(master).st_mode & 0o777 == 0o600


def test_seal_fetches_the_kek_public_key_from_the_vault(local_stack, tmp_path, monkeypatch, capsys):
    """`securetrain seal --kek-url` reads the public key with KeyClient as the pipeline identity."""
    import json as _json

    from securetrain.core.cli import main

    plain = tmp_path / "data.csv"
    plain.write_bytes(b"a,b\n1,2\n")
    kek_id = local_stack.env["SECURETRAIN_KEK_ID"]
    assert main(["--settings", str(local_stack.settings_file()), "seal", str(plain), str(tmp_path / "data.sealed"), "--kek-url", kek_id]) == 0
    header = _json.loads(capsys.readouterr().out)
    assert header["key"]["kek_id"] == kek_id
