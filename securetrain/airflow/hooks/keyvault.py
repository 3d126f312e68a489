"""Key Vault: the KEK, its release policy, and its public key (never its private half).

Airflow's two identities, the pipeline's (``securetrain_keyvault``) and key rotation's
(``securetrain_keyvault_rotator``), can read keys and make new versions of them, nothing else (docs/keys.md, "Roles").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from azure.keyvault.keys import KeyClient, KeyVaultKey, KeyVaultKeyIdentifier

from airflow.sdk import BaseHook
from securetrain.airflow.hooks._connection import ServiceConnection
from securetrain.core.errors import SecurityViolation
from securetrain.core.keyvault import (
    KEY_VAULT_ERRORS,
    check_kek,
    check_kek_version,
    kek_public_key,
    key_client,
    versions_under_other_policies,
)
from securetrain.core.release_policy import ReleasePolicy, ReleasePolicyInvalid
from securetrain.core.sealed import KekPublicKey


class KekWithoutPolicy(SecurityViolation):
    """The KEK carries no release policy Key Vault could enforce."""


class KeyVaultHook(BaseHook):
    """Key Vault through ``azure-keyvault-keys``: the connection's host is the vault URL, its identity
    :meth:`ServiceConnection.credential`, its extra ``ca_bundle`` the roots in place of the system's."""

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

    def get_conn(self) -> KeyClient:
        """Airflow's accessor: a ``KeyClient`` on the connection's vault. Closing it leaves the credential made for it
        open, with its connection to the identity endpoint, until it is collected: :meth:`client` closes both."""
        return key_client(self.connection.endpoint, self.connection.credential(), ca_bundle=self.connection.ca_bundle)

    @contextmanager
    def client(self, vault_url: str | None = None) -> Iterator[KeyClient]:
        """A ``KeyClient`` on ``vault_url`` (None: the connection's vault) as the connection's identity; on leaving,
        the client and the credential made for it are closed, so a task that goes on keeps no connection open."""
        connection = self.connection
        with connection.credential() as credential, key_client(vault_url or connection.endpoint, credential,
                                                               ca_bundle=connection.ca_bundle) as client:  # fmt: skip
            yield client

    def get_key(self, kek_id: str) -> KeyVaultKey:
        ref = KeyVaultKeyIdentifier(kek_id)
        with self.client() as client:
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

    def check_kek(self, name: str, approved: ReleasePolicy) -> KeyVaultKey:
        """The latest version of the KEK ``name``, checked to be released only under ``approved``, immutably.

        Reads only: a missing KEK or one under another policy is refused with an error saying that its data
        owner must create it (:func:`securetrain.core.keyvault.check_kek`)."""
        with self.client() as client:
            return check_kek(client, name, approved)

    def check_kek_at(self, kek_url: str, approved: ReleasePolicy) -> KeyVaultKey:
        """:meth:`check_kek` for the key a Key Vault key URL names (``https://VAULT/keys/NAME[/VERSION]``, as a
        contract names an owner's KEK): its latest version, in that vault, as this connection's identity."""
        ref = KeyVaultKeyIdentifier(kek_url)
        with self.client(ref.vault_url) as client:
            return check_kek(client, ref.name, approved)

    def new_kek_version(self, name: str, approved: ReleasePolicy) -> KekPublicKey:
        """Rotate the KEK ``name``: a new version with the latest one's parameters and release policy; its
        public half, once the new version is checked to carry ``approved`` immutably. Needs the key's rotate
        action (the rotator's role)."""
        target = f"KEK {name} as connection {self.keyvault_conn_id!r}"
        with KEY_VAULT_ERRORS.translated("make a new version of", target), self.client() as client:
            return kek_public_key(check_kek_version(client.rotate_key(name), approved))

    def versions_under_other_policies(self, name: str, approved: ReleasePolicy) -> set[str]:
        """The versions of the KEK ``name`` Key Vault releases under another policy than ``approved``."""
        with self.client() as client:
            return versions_under_other_policies(client, name, approved)

    def latest_kek(self, name: str, approved: ReleasePolicy) -> KekPublicKey:
        """The public half of the latest version of the KEK ``name``, checked as :meth:`check_kek` (resuming a
        rotation makes no new version)."""
        return kek_public_key(self.check_kek(name, approved))

    def test_connection(self) -> tuple[bool, str]:
        try:
            with self.client() as client:
                names = [properties.name for properties in client.list_properties_of_keys()]
        except Exception as exc:  # noqa: BLE001 - the UI shows the reason
            return False, str(exc)
        return True, f"reached {self.connection.endpoint}: {len(names)} key(s) visible"
