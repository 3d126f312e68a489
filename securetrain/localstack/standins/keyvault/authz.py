"""Who may do what to the vault's keys: access-token validation, RBAC role definitions, and the access log.

A caller authenticates with a bearer token from the identity service, validated like every token in the project
(:class:`securetrain.core.attestation.tokens.TokenValidator`) plus Key Vault's audience, and is authorized as Azure
RBAC does it: ``dataActions`` less ``notDataActions``, ``*`` wildcards matched case-insensitively, the built-in
roles as Azure documents them and custom ones from the role-assignment file ``stack up`` writes::

    {"roleDefinitions": [{"roleName", "description", "dataActions": [...], "notDataActions": [...]}],
     "assignments": [{"principalId", "principalName", "role"}]}

The answers to each fault and Azure's sources: docs/keys.md, "Roles".
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securetrain.core.attestation.tokens import AuthorityKeys, AuthorityUnreachable, TokenRejected, TokenValidator
from securetrain.core.errors import ConfigurationError

#: The resource (token audience) Key Vault's data plane asks for; the SDK requests ``<it>/.default``.
VAULT_RESOURCE = "https://vault.azure.net"
_KEYS = "Microsoft.KeyVault/vaults/keys"


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


@functools.lru_cache(maxsize=256)
def _pattern(action: str) -> re.Pattern[str]:
    """An Azure action pattern (``*`` matches any run of characters) as a case-insensitive regex."""
    return re.compile(".*".join(re.escape(part) for part in action.split("*")), re.IGNORECASE)


@dataclass(frozen=True)
class RoleDefinition:
    """A role: the data actions it grants, less the ones it excludes (Azure's ``notDataActions``)."""

    name: str
    data_actions: tuple[str, ...]
    not_data_actions: tuple[str, ...] = ()

    def allows(self, action: Action) -> bool:
        def matches(patterns: Iterable[str]) -> bool:
            return any(_pattern(pattern).fullmatch(action.value) for pattern in patterns)

        return matches(self.data_actions) and not matches(self.not_data_actions)

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> RoleDefinition:
        name, granted, excluded = document["roleName"], document["dataActions"], document.get("notDataActions", [])
        if not isinstance(name, str) or not name:
            raise ValueError("a role definition needs a roleName")
        for field, value in (("dataActions", granted), ("notDataActions", excluded)):
            if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
                raise ValueError(f"role {name!r}: {field} must be a list of action strings")
        return cls(name, tuple(granted), tuple(excluded))

    def to_json(self, description: str) -> dict[str, Any]:
        return {"roleName": self.name, "description": description, "dataActions": list(self.data_actions),
                "notDataActions": list(self.not_data_actions)}  # fmt: skip


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
    """Who holds which role on the vault, and what each role (built-in or the file's custom ones) grants."""

    by_principal: Mapping[str, frozenset[str]]
    roles: Mapping[str, RoleDefinition]

    @classmethod
    def load(cls, path: Path) -> RoleAssignments:
        try:
            document = json.loads(path.read_text())
            roles = dict(BUILT_IN_ROLES)
            for entry in document.get("roleDefinitions", []):
                role = RoleDefinition.from_json(entry)
                if role.name in roles:
                    raise ConfigurationError(f"{path}: role {role.name!r} is defined twice (or redefines a built-in role)")
                roles[role.name] = role
            grants: dict[str, set[str]] = {}
            for entry in document["assignments"]:
                if entry["role"] not in roles:
                    raise ConfigurationError(f"{path}: unknown role {entry['role']!r} (roles: {', '.join(roles)})")
                grants.setdefault(entry["principalId"], set()).add(entry["role"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"cannot read the role assignments {path}: {exc}") from None
        return cls({principal: frozenset(names) for principal, names in grants.items()}, roles)

    def allows(self, object_id: str, action: Action) -> bool:
        return any(self.roles[role].allows(action) for role in self.by_principal.get(object_id, ()))


class Authorizer:
    """Authenticates bearer tokens from ``issuer`` (keys published by ``authority``) and checks the caller's roles."""

    def __init__(self, issuer: str, authority: str, ca_bundle: str, roles_file: Path) -> None:
        metadata = f"{authority.rstrip('/')}/.well-known/openid-configuration"
        self._validator = TokenValidator(AuthorityKeys(issuer, metadata_url=metadata, verify=ca_bundle), leeway=0)
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
                f"oid={caller.object_id}; Action: '{action.value}'; "
                f"Resource: '{resource}'"
            )
