"""Who may read and change the attestation policies: Azure Attestation's resource, actions and built-in roles.

Policy management is authenticated like every protected stand-in (:mod:`securetrain.localstack.standins.access_tokens`):
an Entra bearer token for Azure Attestation's resource, ``https://attest.azure.net`` (the scope
``azure-security-attestation`` asks for). It is authorized by Azure RBAC (:mod:`securetrain.localstack.standins.rbac`)
with the actions Azure Attestation documents: reading a policy needs
``Microsoft.Attestation/attestationProviders/attestation/read`` (role "Attestation Reader"), setting one
``.../write`` and resetting one ``.../delete`` (both in "Attestation Contributor"). Attesting needs no token,
as on MAA's shared and AAD-mode providers.

Sources: https://learn.microsoft.com/azure/attestation/quickstart-powershell#policy-management (the actions),
https://learn.microsoft.com/azure/role-based-access-control/built-in-roles (the roles).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path

from securetrain.localstack.standins.access_tokens import AccessTokenValidator
from securetrain.localstack.standins.rbac import Authorizer, RoleDefinition

#: The resource (token audience) of Azure Attestation; the SDK requests ``<it>/.default``.
ATTESTATION_RESOURCE = "https://attest.azure.net"
_ATTESTATION = "Microsoft.Attestation/attestationProviders/attestation"


class PolicyAction(enum.Enum):
    """The Azure Attestation actions policy management needs, by their Azure names."""

    READ = f"{_ATTESTATION}/read"
    WRITE = f"{_ATTESTATION}/write"
    DELETE = f"{_ATTESTATION}/delete"

    @property
    def data_action(self) -> bool:
        """Azure Attestation documents these as actions (a role's ``actions``), not data actions."""
        return False


BUILT_IN_ROLES: Mapping[str, RoleDefinition] = {
    role.name: role
    for role in (
        RoleDefinition("Attestation Reader", actions=(PolicyAction.READ.value,)),
        RoleDefinition("Attestation Contributor", actions=tuple(action.value for action in PolicyAction)),
    )
}


def attestation_authorizer(issuer: str, authority: str, ca_bundle: str, roles_file: Path) -> Authorizer:
    """Access control of policy management: tokens for Azure Attestation, the file's roles beside the built-in ones."""
    return Authorizer(AccessTokenValidator(issuer, authority, ca_bundle, ATTESTATION_RESOURCE), roles_file, BUILT_IN_ROLES)
