"""Key Vault: the KEK, its release policy, and its public key (never its private half)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from azure.core.credentials import TokenCredential
from azure.keyvault.keys import KeyClient, KeyVaultKey, KeyVaultKeyIdentifier
from azure.keyvault.keys.crypto import CryptographyClient

from airflow.sdk import BaseHook
from operators.hooks._connection import ServiceConnection
from securetrain.errors import SecurityViolation
from securetrain.identity import LocalIdentity, LocalIdentityCredential
from securetrain.keyvault import cryptography_client, ensure_kek, kek_public_key, key_client
from securetrain.release_policy import ReleasePolicy, ReleasePolicyInvalid
from securetrain.sealed import KekPublicKey


class KekWithoutPolicy(SecurityViolation):
    """The KEK carries no release policy Key Vault could enforce."""


class KeyVaultHook(BaseHook):
    """Key Vault through ``azure-keyvault-keys``.

    The connection's host is the vault URL. Locally its extra names the stack's identity (``credentials``:
    the pipeline's credentials file, ``identity_endpoint``) and ``ca_bundle``; on Azure both are left out
    and ``DefaultAzureCredential`` (a managed identity, the CLI, ...) authenticates.
    """

    conn_name_attr = "keyvault_conn_id"
    default_conn_name = "securetrain_keyvault"
    conn_type = "securetrain_keyvault"
    hook_name = "securetrain Key Vault"

    def __init__(self, keyvault_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.keyvault_conn_id = keyvault_conn_id

    @cached_property
    def connection(self) -> ServiceConnection:
        return ServiceConnection.of(self.get_connection(self.keyvault_conn_id))

    def credential(self) -> TokenCredential:
        credentials = self.connection.file("credentials")
        if credentials is None:
            from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - only Azure needs it

            return DefaultAzureCredential()
        authority = self.connection.required("identity_endpoint")
        return LocalIdentityCredential(authority, LocalIdentity.load(credentials), ca_bundle=self.connection.required("ca_bundle"))

    def get_conn(self) -> KeyClient:
        return key_client(self.connection.endpoint, self.credential(), ca_bundle=self.connection.ca_bundle)

    def get_key(self, kek_id: str) -> KeyVaultKey:
        ref = KeyVaultKeyIdentifier(kek_id)
        with self.get_conn() as client:
            return client.get_key(ref.name, ref.version)

    def kek_public_key(self, kek_id: str) -> KekPublicKey:
        """The KEK's public half, as data owners seal for it and as sealed headers must name it."""
        return kek_public_key(self.get_key(kek_id))

    def release_policy(self, kek_id: str) -> ReleasePolicy:
        """The release policy Key Vault enforces for ``kek_id``."""
        key = self.get_key(kek_id)
        policy = key.properties.release_policy
        if policy is None or not policy.encoded_policy:
            raise KekWithoutPolicy(f"the KEK {key.id} has no release policy; it must not be used")
        try:
            return ReleasePolicy.parse(policy.encoded_policy)
        except ReleasePolicyInvalid as exc:
            raise KekWithoutPolicy(f"the KEK {key.id}'s release policy does not parse: {exc}") from None

    def ensure_kek(self, name: str, approved: ReleasePolicy) -> KeyVaultKey:
        """The KEK ``name``, created under ``approved`` if absent, refused if it exists under another policy."""
        with self.get_conn() as client:
            return ensure_kek(client, name, approved)

    def new_kek_version(self, name: str) -> KekPublicKey:
        """Rotate the KEK ``name``: a new version with the latest one's settings (size, exportable, release
        policy); its public half. Needs the key's rotate action (Crypto Officer)."""
        with self.get_conn() as client:
            return kek_public_key(client.rotate_key(name))

    def latest_kek(self, name: str) -> KekPublicKey:
        """The public half of the latest version of the KEK ``name`` (resuming a rotation makes no new one)."""
        with self.get_conn() as client:
            return kek_public_key(client.get_key(name))

    def unwrap_clients(self) -> Callable[[str], CryptographyClient]:
        """A factory of ``CryptographyClient`` per versioned key id, all as this connection's identity and
        sharing one credential (one token); what :func:`securetrain.keyvault.rewrap_blob` takes. The
        vault unwraps with the key's private half, which never leaves it."""
        credential = self.credential()
        ca_bundle = self.connection.ca_bundle
        return lambda key_id: cryptography_client(key_id, credential, ca_bundle=ca_bundle)

    def test_connection(self) -> tuple[bool, str]:
        try:
            with self.get_conn() as client:
                names = [properties.name for properties in client.list_properties_of_keys()]
        except Exception as exc:  # noqa: BLE001 - the UI shows the reason
            return False, str(exc)
        return True, f"reached {self.connection.endpoint}: {len(names)} key(s) visible"
