"""Who may do what to the vault's keys: access-token validation, RBAC roles, and the access log.

Authentication: a bearer token from the identity service (:mod:`emulators.identity`), validated like
every other token in the project (:class:`securetrain.attestation.tokens.TokenValidator`: RS256 with a
key the issuer publishes over verified TLS, issuer, ``exp``/``nbf``) plus the audience, which must be
Key Vault's resource. A missing token gets Key Vault's 401 challenge; a bad one a 401 naming the fault.

Authorization: Azure RBAC's built-in Key Vault roles, reduced to what the project uses, assigned to
identities' object ids in a role-assignment file (``stack up`` writes it). Every decision, allowed or
denied, is appended to the access log (JSON lines) for the audit stage.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from securetrain.attestation.tokens import AuthorityKeys, AuthorityUnreachable, TokenRejected, TokenValidator
from securetrain.errors import ConfigurationError

#: The resource (token audience) Key Vault's data plane asks for; the SDK requests ``<it>/.default``.
VAULT_RESOURCE = "https://vault.azure.net"


class Action(enum.Enum):
    """Key Vault data actions (``Microsoft.KeyVault/vaults/keys/...``) the stand-in implements."""

    READ = "keys/read"
    CREATE = "keys/create"
    ROTATE = "keys/rotate/action"
    UPDATE = "keys/update/action"
    DELETE = "keys/delete"
    RECOVER = "keys/recover/action"
    PURGE = "deletedkeys/delete"
    READ_DELETED = "deletedkeys/read/action"
    ENCRYPT = "keys/encrypt/action"
    DECRYPT = "keys/decrypt/action"
    WRAP = "keys/wrap/action"
    UNWRAP = "keys/unwrap/action"
    RELEASE = "keys/release/action"


#: Built-in role name -> the actions it allows (Azure's names; the action sets are the project's subset).
ROLES: Mapping[str, frozenset[Action]] = {
    "Key Vault Crypto Officer": frozenset(
        {Action.READ, Action.CREATE, Action.ROTATE, Action.UPDATE, Action.DELETE, Action.RECOVER,
         Action.PURGE, Action.READ_DELETED}
    ),
    "Key Vault Crypto User": frozenset(
        {Action.READ, Action.ENCRYPT, Action.DECRYPT, Action.WRAP, Action.UNWRAP}
    ),
    "Key Vault Crypto Service Release User": frozenset({Action.RELEASE}),
}  # fmt: skip


class Unauthenticated(Exception):
    """No token, or a token that failed validation (401)."""


class NotPermitted(Exception):
    """A valid identity without a role allowing the action (403)."""


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the identity's object id and display name."""

    object_id: str
    name: str


@dataclass(frozen=True)
class RoleAssignments:
    """``{"assignments": [{"principalId", "principalName", "role"}]}``: who holds which role on the vault."""

    by_principal: Mapping[str, frozenset[str]]

    @classmethod
    def load(cls, path: Path) -> RoleAssignments:
        try:
            document = json.loads(path.read_text())
            grants: dict[str, set[str]] = {}
            for entry in document["assignments"]:
                if entry["role"] not in ROLES:
                    raise ConfigurationError(f"{path}: unknown role {entry['role']!r} (roles: {', '.join(ROLES)})")
                grants.setdefault(entry["principalId"], set()).add(entry["role"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"cannot read the role assignments {path}: {exc}") from None
        return cls({principal: frozenset(roles) for principal, roles in grants.items()})

    def allows(self, object_id: str, action: Action) -> bool:
        return any(action in ROLES[role] for role in self.by_principal.get(object_id, ()))


class Authorizer:
    """Authenticates bearer tokens from ``issuer`` and checks the caller's roles."""

    def __init__(self, issuer: str, ca_bundle: str, roles_file: Path) -> None:
        self._validator = TokenValidator(AuthorityKeys(issuer, verify=ca_bundle), leeway=0)
        self._roles_file = roles_file

    @property
    def issuer(self) -> str:
        return self._validator.issuer

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` header value names; :class:`Unauthenticated` if it does not."""
        if not authorization:
            raise Unauthenticated("AKV10000: Request is missing a Bearer or PoP token.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("AKV10001: the Authorization header is not 'Bearer <token>'.")
        try:
            claims = self._validator.validate(token.strip()).claims
        except TokenRejected as exc:
            raise Unauthenticated(f"AKV10032: the access token is not valid: {exc}") from None
        except AuthorityUnreachable as exc:
            raise Unauthenticated(f"AKV10046: the token issuer's keys cannot be fetched: {exc}") from None
        if claims.get("aud") != VAULT_RESOURCE:
            raise Unauthenticated(f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, found: {claims.get('aud')}.")
        object_id = claims.get("oid")
        if not isinstance(object_id, str):
            raise Unauthenticated("AKV10032: the access token names no object id (oid).")
        return Caller(object_id, str(claims.get("name") or claims.get("appid") or object_id))

    def authorize(self, caller: Caller, action: Action, resource: str) -> None:
        """Return if ``caller`` holds a role allowing ``action``; :class:`NotPermitted` otherwise."""
        # Read per decision: a changed assignment takes effect at once, as in Azure (after propagation).
        if not RoleAssignments.load(self._roles_file).allows(caller.object_id, action):
            raise NotPermitted(
                f"Caller is not authorized to perform action on resource. Caller: name={caller.name};"
                f"oid={caller.object_id}; Action: 'Microsoft.KeyVault/vaults/{action.value}'; "
                f"Resource: '{resource}'"
            )
