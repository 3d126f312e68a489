"""Who may do what to the vault's keys: Key Vault's resource, its data actions and built-in roles, its error codes.

Authentication is the Entra bearer token every protected stand-in checks
(:mod:`securetrain.localstack.standins.access_tokens`), for Key Vault's resource; a missing token gets Key
Vault's 401 challenge, a bad one a 401 whose message carries Key Vault's ``AKV`` code for the fault.
Authorization is Azure RBAC (:mod:`securetrain.localstack.standins.rbac`) over Key Vault's data actions: the
built-in Key Vault roles are defined here with the data actions Azure documents for them; a deployment's
custom roles and the assignments are in the role-assignment file ``stack up`` writes.

The answers to each fault and Azure's sources: docs/keys.md, "Roles".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path

from securetrain.localstack.standins.access_tokens import AccessTokenValidator, Refusal, Unauthenticated
from securetrain.localstack.standins.rbac import Authorizer, RoleAssignments, RoleDefinition

#: The resource (token audience) Key Vault's data plane asks for; the SDK requests ``<it>/.default``.
VAULT_RESOURCE = "https://vault.azure.net"
_KEYS = "Microsoft.KeyVault/vaults/keys"
#: Key Vault's error code for each authentication fault, as it prefixes its 401 messages.
AKV_CODES: Mapping[Refusal, str] = {
    Refusal.MISSING: "AKV10000",
    Refusal.NOT_BEARER: "AKV10001",
    Refusal.INVALID: "AKV10032",
    Refusal.ISSUER_UNREACHABLE: "AKV10046",
    Refusal.WRONG_AUDIENCE: "AKV10022",
    Refusal.NO_OBJECT_ID: "AKV10032",
}


class Action(enum.Enum):
    """The Key Vault data actions the stand-in's operations need, by their Azure names."""

    READ = f"{_KEYS}/read"  # get and list keys and versions, and deleted keys
    CREATE = f"{_KEYS}/create/action"  # a new key, or a new version of one
    ROTATE = f"{_KEYS}/rotate/action"  # a new version with the latest version's parameters
    UPDATE = f"{_KEYS}/update/action"
    DELETE = f"{_KEYS}/delete"
    RECOVER = f"{_KEYS}/recover/action"
    PURGE = f"{_KEYS}/purge/action"
    ENCRYPT = f"{_KEYS}/encrypt/action"
    DECRYPT = f"{_KEYS}/decrypt/action"
    WRAP = f"{_KEYS}/wrap/action"
    UNWRAP = f"{_KEYS}/unwrap/action"
    RELEASE = f"{_KEYS}/release/action"

    @property
    def data_action(self) -> bool:
        """Key Vault's key operations are data-plane operations: roles grant them as ``dataActions``."""
        return True


#: The built-in Key Vault roles, with the data actions Azure documents for each (not a reduced set: a
#: deployment that assigns one gets all of it, which is why the project assigns custom roles where a
#: built-in role grants more than an identity needs).
BUILT_IN_ROLES: Mapping[str, RoleDefinition] = {
    role.name: role
    for role in (
        RoleDefinition("Key Vault Reader", ("Microsoft.KeyVault/vaults/*/read",
                                            "Microsoft.KeyVault/vaults/secrets/readMetadata/action")),
        RoleDefinition("Key Vault Crypto Officer", (f"{_KEYS}/*", "Microsoft.KeyVault/vaults/keyrotationpolicies/*")),
        RoleDefinition("Key Vault Crypto User", tuple(f"{_KEYS}/{action}" for action in (
            "read", "update/action", "backup/action", "encrypt/action", "decrypt/action", "wrap/action",
            "unwrap/action", "sign/action", "verify/action"))),
        RoleDefinition("Key Vault Crypto Service Release User", (f"{_KEYS}/release/action",)),
    )
}  # fmt: skip


def vault_authorizer(issuer: str, authority: str, ca_bundle: str, roles_file: Path) -> Authorizer:
    """Access control of the vault: tokens for Key Vault's resource, the file's roles beside the built-in ones."""
    return Authorizer(AccessTokenValidator(issuer, authority, ca_bundle, VAULT_RESOURCE), roles_file, BUILT_IN_ROLES)


def load_role_assignments(path: Path) -> RoleAssignments:
    """The vault's role assignments in ``path`` (as the vault reads them for each decision)."""
    return RoleAssignments.load(path, BUILT_IN_ROLES)


def vault_401_message(exc: Unauthenticated) -> str:
    """The message Key Vault answers an authentication fault with: its code, then what was wrong."""
    return f"{AKV_CODES[exc.refusal]}: {exc}"
