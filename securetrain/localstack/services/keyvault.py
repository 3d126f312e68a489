"""The Key Vault stand-in as a stack service: roles, master key, approved release policy, the demo KEK.

Every ``up`` rewrites the role definitions and assignments (:data:`ROLE_OF`: each identity the narrowest role
that does its work) and the approved release policy (derived from the approved attestation policy:
:func:`securetrain.localstack.services.attestation.local_release_policy`, for the stack's platform), starts the vault with purge protection
and, once it is healthy, has the data owner make sure the demo KEK's latest version is released only under that
policy; docs/local-stack.md ("Identity service and Key Vault stand-in") lists the files, docs/keys.md the roles.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from securetrain.localstack.standins.rbac import RoleDefinition
from securetrain.localstack.identities import (
    CVM_IDENTITY,
    DATA_OWNER_IDENTITY,
    LOCAL_TENANT,
    PIPELINE_IDENTITY,
    ROTATOR_IDENTITY,
    application_credential,
)
from securetrain.core.keyvault import KEK_NAME, create_kek_version, key_client
from securetrain.core.release_policy import ReleasePolicy
from securetrain.localstack.services.attestation import ATTESTATION, local_release_policy
from securetrain.localstack.services.identity import IDENTITY, authority, stack_identities
from securetrain.localstack.standins.identity.app import token_issuer
from securetrain.localstack.layout import StackLayout, write_file
from securetrain.localstack.service import HEALTH_TIMEOUT_S, Service, ServiceContext, ServiceUnhealthy, python_service_argv

log = logging.getLogger(__name__)

_KEYS = "Microsoft.KeyVault/vaults/keys"
#: The project's custom roles (an Azure deployment defines the same with ``az role definition create``):
#: what each grants, and why no built-in role would do.
CUSTOM_ROLES = {
    RoleDefinition("securetrain KEK Owner", (f"{_KEYS}/*",), tuple(
        f"{_KEYS}/{action}" for action in ("decrypt/action", "unwrap/action", "sign/action", "release/action")
    )): "Key Vault Crypto Officer less every use of a private key: the data owner creates KEK versions under "
        "immutable release policies and manages their lifecycle, but never unwraps, decrypts or releases",
    RoleDefinition("securetrain KEK Rotator", (f"{_KEYS}/read", f"{_KEYS}/rotate/action")):
        "read a key and make a new version of it with the same parameters and release policy; nothing else",
}  # fmt: skip
ROLE_OF = {
    PIPELINE_IDENTITY: "Key Vault Reader",
    CVM_IDENTITY: "Key Vault Crypto Service Release User",
    ROTATOR_IDENTITY: "securetrain KEK Rotator",
    DATA_OWNER_IDENTITY: "securetrain KEK Owner",
}


def roles_path(layout: StackLayout) -> Path:
    return layout.policies_dir / "keyvault-roles.json"


def release_policy_path(layout: StackLayout) -> Path:
    return layout.policies_dir / "release-policy.json"


def master_key_path(layout: StackLayout) -> Path:
    return layout.secrets_dir / "keyvault-master-key"


def approved_local_policy(context: ServiceContext) -> ReleasePolicy:
    """The local stack's approved release policy, (re)written to its file."""
    attestation = context.running(ATTESTATION)
    policy = local_release_policy(context.layout, attestation.base_url)
    write_file(release_policy_path(context.layout), policy.to_bytes(), mode=0o644)
    return policy


def write_roles(layout: StackLayout) -> None:
    identities = stack_identities(layout)
    assignments = [
        {"principalId": identities[name].object_id, "principalName": name, "role": role} for name, role in ROLE_OF.items()
    ]
    definitions = [role.to_json(description) for role, description in CUSTOM_ROLES.items()]
    roles = {"roleDefinitions": definitions, "assignments": assignments}
    write_file(roles_path(layout), json.dumps(roles, indent=2).encode(), mode=0o644)


def _argv(context: ServiceContext) -> Sequence[str]:
    write_roles(context.layout)
    approved_local_policy(context)
    return python_service_argv(
        "securetrain.localstack.standins.keyvault", context,
        "--data-dir", str(context.data_dir),
        "--master-key", str(master_key_path(context.layout)),
        "--roles", str(roles_path(context.layout)),
        "--identity-authority", authority(context.running(IDENTITY)),
        "--identity-issuer", token_issuer(LOCAL_TENANT),
        "--ca-bundle", str(context.ca_bundle),
        "--purge-protection",
    )  # fmt: skip


def _health_check(context: ServiceContext) -> None:
    # Unauthenticated, the vault must answer Key Vault's challenge: 401 naming the identity authority.
    try:
        response = requests.get(
            f"{context.base_url}/keys", params={"api-version": "7.6"}, verify=str(context.ca_bundle),
            timeout=HEALTH_TIMEOUT_S,
        )  # fmt: skip
    except requests.RequestException as exc:
        raise ServiceUnhealthy.because(exc) from exc
    challenge = response.headers.get("WWW-Authenticate", "")
    if response.status_code != 401 or "authorization=" not in challenge:
        raise ServiceUnhealthy(f"expected a 401 bearer challenge, got HTTP {response.status_code} {challenge!r}")


def _demo_kek_id(context: ServiceContext) -> str:
    """The versioned id of the demo KEK's latest version, made by the data owner under the approved policy."""
    policy = approved_local_policy(context)
    owner = stack_identities(context.layout)[DATA_OWNER_IDENTITY]
    credential = application_credential(owner, context.running(IDENTITY).base_url, context.ca_bundle)
    with credential, key_client(context.base_url, credential, ca_bundle=context.ca_bundle) as client:
        return str(create_kek_version(client, KEK_NAME, policy).id)


def _exports(context: ServiceContext) -> Mapping[str, str]:
    return {
        "SECURETRAIN_KEYVAULT_URL": context.base_url,
        "SECURETRAIN_KEK_ID": _demo_kek_id(context),
        "SECURETRAIN_RELEASE_POLICY": str(release_policy_path(context.layout)),
        "SECURETRAIN_KEYVAULT_ACCESS_LOG": str(context.data_dir / "access.jsonl"),
        "SECURETRAIN_KEYVAULT_RELEASE_ROOT": str(context.ca_bundle),
    }


KEYVAULT = Service(
    name="keyvault",
    description="Azure Key Vault stand-in: keys API, Secure Key Release, RBAC roles",
    default_port=10800,
    argv=_argv,
    health_check=_health_check,
    exports=_exports,
    depends_on=(IDENTITY.name, ATTESTATION.name),
)
