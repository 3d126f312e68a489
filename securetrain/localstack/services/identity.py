"""The identity service as a stack service, and the stack's identities.

``up`` creates each identity's credentials file once (``<state>/secrets/identities/<name>.json``, 0600)
and exports the service's URL as ``SECURETRAIN_IDENTITY_ENDPOINT``: the authority host azure-identity is
pointed at (``AZURE_AUTHORITY_HOST``); :mod:`securetrain.localstack.settings` gives each process its
identity's settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from securetrain.localstack.identities import (
    CVM_IDENTITY,
    DATA_OWNER_IDENTITY,
    LOCAL_TENANT,
    PIPELINE_IDENTITY,
    ROTATOR_IDENTITY,
    LocalIdentity,
)
from securetrain.localstack.layout import StackLayout
from securetrain.localstack.service import Service, ServiceContext, check_openid_issuer, python_service_argv
from securetrain.localstack.standins.identity.app import token_issuer

IDENTITIES = (PIPELINE_IDENTITY, CVM_IDENTITY, ROTATOR_IDENTITY, DATA_OWNER_IDENTITY)


def identities_dir(layout: StackLayout) -> Path:
    return layout.secrets_dir / "identities"


def stack_identities(layout: StackLayout) -> dict[str, LocalIdentity]:
    """The stack's identities by name, created on first use."""
    directory = identities_dir(layout)
    return {name: LocalIdentity.load_or_create(directory / f"{name}.json", name) for name in IDENTITIES}


def authority(context: ServiceContext) -> str:
    """The tenant's authority URL: where its OpenID metadata is, and what Key Vault's challenge names."""
    return f"{context.base_url}/{LOCAL_TENANT}"


def _argv(context: ServiceContext) -> Sequence[str]:
    stack_identities(context.layout)
    return python_service_argv(
        "securetrain.localstack.standins.identity", context,
        "--identities-dir", str(identities_dir(context.layout)),
        "--state-dir", str(context.data_dir),
    )  # fmt: skip


def _health_check(context: ServiceContext) -> None:
    check_openid_issuer(context, f"{authority(context)}/.well-known/openid-configuration", token_issuer())


def _exports(context: ServiceContext) -> Mapping[str, str]:
    return {"SECURETRAIN_IDENTITY_ENDPOINT": context.base_url}


IDENTITY = Service(
    name="identity",
    description="OAuth 2.0 token issuer for the stack's identities (Entra ID stand-in)",
    default_port=10700,
    argv=_argv,
    health_check=_health_check,
    exports=_exports,
)
