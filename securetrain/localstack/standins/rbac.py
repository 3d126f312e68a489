"""Azure RBAC as the stand-ins enforce it: role definitions, role assignments, and whether a role allows an operation.

A role definition grants ``actions`` (control-plane operations; Azure Attestation's policy management is
authorized by these) and ``dataActions`` (data-plane operations, such as Key Vault's key operations), and takes
away ``notActions`` / ``notDataActions``; each may hold ``*`` wildcards, matched case-insensitively. A principal
may do what any of its roles allows. Each service defines its operations (:class:`Operation`) and its built-in
roles; a deployment's custom roles and its assignments are in a role-assignment file ``stack up`` writes::

    {"roleDefinitions": [{"roleName", "description", "actions", "notActions", "dataActions", "notDataActions"}],
     "assignments": [{"principalId", "principalName", "role"}]}

Sources: https://learn.microsoft.com/azure/role-based-access-control/role-definitions (actions and data
actions, and how the ``not`` lists subtract), https://learn.microsoft.com/azure/role-based-access-control/built-in-roles.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from securetrain.core.errors import ConfigurationError
from securetrain.localstack.standins.access_tokens import AccessTokenValidator, Caller

_PERMISSION_LISTS = (("actions", "actions"), ("not_actions", "notActions"), ("data_actions", "dataActions"),
                     ("not_data_actions", "notDataActions"))  # fmt: skip


class Operation(Protocol):
    """An operation a service authorizes: its Azure name, and whether it is a data action or an action."""

    @property
    def value(self) -> str: ...

    @property
    def data_action(self) -> bool: ...


@functools.lru_cache(maxsize=256)
def _pattern(action: str) -> re.Pattern[str]:
    """An Azure action pattern (``*`` matches any run of characters) as a case-insensitive regex."""
    return re.compile(".*".join(re.escape(part) for part in action.split("*")), re.IGNORECASE)


def _matches(patterns: Iterable[str], operation: str) -> bool:
    return any(_pattern(pattern).fullmatch(operation) for pattern in patterns)


@dataclass(frozen=True)
class RoleDefinition:
    """A role: the actions and data actions it grants, less the ones it excludes."""

    name: str
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()

    def allows(self, operation: Operation) -> bool:
        if operation.data_action:
            granted, excluded = self.data_actions, self.not_data_actions
        else:
            granted, excluded = self.actions, self.not_actions
        return _matches(granted, operation.value) and not _matches(excluded, operation.value)

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> RoleDefinition:
        name = document["roleName"]
        if not isinstance(name, str) or not name:
            raise ValueError("a role definition needs a roleName")
        lists: dict[str, tuple[str, ...]] = {}
        for attribute, field in _PERMISSION_LISTS:
            value = document.get(field, [])
            if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
                raise ValueError(f"role {name!r}: {field} must be a list of action strings")
            lists[attribute] = tuple(value)
        return cls(name, **lists)

    def to_json(self, description: str) -> dict[str, Any]:
        return {"roleName": self.name, "description": description,
                **{field: list(getattr(self, attribute)) for attribute, field in _PERMISSION_LISTS}}  # fmt: skip


class NotPermitted(Exception):
    """A valid identity without a role allowing the operation (403)."""


@dataclass(frozen=True)
class RoleAssignments:
    """Who holds which role, and what each role (built-in or the file's custom ones) grants."""

    by_principal: Mapping[str, frozenset[str]]
    roles: Mapping[str, RoleDefinition]

    @classmethod
    def load(cls, path: Path, built_in: Mapping[str, RoleDefinition]) -> RoleAssignments:
        """The assignments in ``path``; its custom roles beside the service's ``built_in`` ones."""
        try:
            document = json.loads(path.read_text())
            roles = dict(built_in)
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

    def allows(self, object_id: str, operation: Operation) -> bool:
        return any(self.roles[role].allows(operation) for role in self.by_principal.get(object_id, ()))


class Authorizer:
    """A service's access control: the caller's bearer token (:mod:`.access_tokens`), then its roles."""

    def __init__(self, validator: AccessTokenValidator, roles_file: Path, built_in: Mapping[str, RoleDefinition]) -> None:
        self._validator = validator
        self._roles_file = roles_file
        self._built_in = built_in

    @property
    def issuer(self) -> str:
        return self._validator.issuer

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` header value names; :class:`~.access_tokens.Unauthenticated` if none."""
        return self._validator.caller(authorization)

    def assignments(self) -> RoleAssignments:
        # Read per decision: a changed assignment takes effect at once, as in Azure (after propagation).
        return RoleAssignments.load(self._roles_file, self._built_in)

    def authorize(self, caller: Caller, operation: Operation, resource: str) -> None:
        """Return if ``caller`` holds a role allowing ``operation``; :class:`NotPermitted` otherwise."""
        if not self.assignments().allows(caller.object_id, operation):
            raise NotPermitted(
                f"Caller is not authorized to perform action on resource. Caller: name={caller.name};"
                f"oid={caller.object_id}; Action: '{operation.value}'; "
                f"Resource: '{resource}'"
            )
