"""The settings the local stack gives each process: the same variables a deployment on Azure sets.

Production code never reads ``stack.env``; it reads its settings from its environment or a dotenv file. This
module turns what the stack's services export into those settings: :func:`application_settings` for a process
signing in as one of the stack's applications (``up`` writes one dotenv file each), :func:`tee_environment` for
the TEE's agent, signing in as its managed identity. docs/local-stack.md ("Settings") lists the variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from securetrain.localstack.emulated_platform import PLATFORM_ENV, EmulatedPlatform
from securetrain.localstack.envfile import write_stack_env
from securetrain.localstack.errors import StackConfigurationError
from securetrain.localstack.identities import CVM_IDENTITY, DATA_OWNER_IDENTITY, PIPELINE_IDENTITY, ROTATOR_IDENTITY
from securetrain.localstack.layout import StackLayout
from securetrain.localstack.services.identity import stack_identities
from securetrain.localstack.stack_gpu import gpu_tee_environment
from securetrain.tee.allocator import TEE_ALLOCATOR_ENVIRONMENT

#: The applications a settings file is written for (the TEE's managed identity has none: no secret exists).
APPLICATIONS = (PIPELINE_IDENTITY, ROTATOR_IDENTITY, DATA_OWNER_IDENTITY)
#: stack.env variable -> setting, for the endpoints and roots every process uses (the TEE finds each KEK's
#: vault in the KEK's id).
_COMMON = {
    "SECURETRAIN_BLOB_ENDPOINT": "SECURETRAIN_STORAGE_ACCOUNT_URL",
    "SECURETRAIN_ATTESTATION_ENDPOINT": "SECURETRAIN_ATTESTATION_ENDPOINT",
    "SECURETRAIN_CA_BUNDLE": "SECURETRAIN_CA_BUNDLE",
}
#: ... and those of the command line: the vault and the approved release policy,
_COMMAND_LINE = {
    "SECURETRAIN_KEYVAULT_URL": "SECURETRAIN_KEYVAULT_URL",
    "SECURETRAIN_RELEASE_POLICY": "SECURETRAIN_RELEASE_POLICY",
}
#: ... and, for the pipeline's identities only, the agent's API with the pipeline's client certificate.
_AGENT_CLIENT = {
    "SECURETRAIN_CVM_ENDPOINT": "SECURETRAIN_CVM_ENDPOINT",
    "SECURETRAIN_CVM_PIPELINE_CERT": "SECURETRAIN_CVM_CLIENT_CERT",
    "SECURETRAIN_CVM_PIPELINE_KEY": "SECURETRAIN_CVM_CLIENT_KEY",
}


def _pick(stack_env: Mapping[str, str], names: Mapping[str, str]) -> dict[str, str]:
    """The settings of ``names`` the stack exports (a stack of some services only exports theirs)."""
    return {setting: stack_env[name] for name, setting in names.items() if stack_env.get(name)}


def settings_path(layout: StackLayout, identity: str) -> Path:
    """The dotenv file of application ``identity``'s settings."""
    return layout.secrets_dir / "settings" / f"{identity}.env"


def application_settings(stack_env: Mapping[str, str], layout: StackLayout, identity: str) -> dict[str, str]:
    """The settings of a process that signs in as application ``identity``."""
    if identity not in APPLICATIONS:
        raise StackConfigurationError(f"{identity!r} is not one of the stack's applications ({', '.join(APPLICATIONS)})")
    application = stack_identities(layout)[identity]
    assert application.client_secret is not None  # an application, not a managed identity
    return {
        **_pick(stack_env, _COMMON),
        **_pick(stack_env, _COMMAND_LINE),
        **(_pick(stack_env, _AGENT_CLIENT) if identity != DATA_OWNER_IDENTITY else {}),
        "SECURETRAIN_ENTRA_INSTANCE_DISCOVERY": "false",
        "AZURE_AUTHORITY_HOST": stack_env["SECURETRAIN_IDENTITY_ENDPOINT"],
        "AZURE_TENANT_ID": application.tenant_id,
        "AZURE_CLIENT_ID": application.client_id,
        "AZURE_CLIENT_SECRET": application.client_secret,
    }


def write_settings_files(stack_env: Mapping[str, str], layout: StackLayout) -> None:
    """Write each application's settings file (0600: it holds the client secret), when the stack runs the
    identity service its applications sign in at."""
    if "SECURETRAIN_IDENTITY_ENDPOINT" not in stack_env:
        return
    for identity in APPLICATIONS:
        write_stack_env(settings_path(layout, identity), application_settings(stack_env, layout, identity))


#: stack.env variable -> setting, for the TEE's evidence on each platform: the simulated chip's state, which only
#: the local CVM's entry point reads (securetrain.localstack.platform.local_cvm), or the emulated Azure CVM's vTPM,
#: event log and IMDS (the stack CA, SECURETRAIN_CA_BUNDLE, verifies the IMDS stand-in).
_EVIDENCE = {
    EmulatedPlatform.SNP: {"SECURETRAIN_SNP_PLATFORM_DIR": "SECURETRAIN_SNP_PLATFORM_DIR"},
    EmulatedPlatform.AZURE_CVM: {
        "SECURETRAIN_VTPM_TCTI": "SECURETRAIN_VTPM_TCTI",
        "SECURETRAIN_EVENT_LOG": "SECURETRAIN_EVENT_LOG",
        "SECURETRAIN_IMDS_ENDPOINT": "SECURETRAIN_IMDS_ENDPOINT",
    },
}


def tee_environment(stack_env: Mapping[str, str], layout: StackLayout) -> dict[str, str]:
    """The environment of the TEE's agent: its services, trust roots, managed identity, the evidence provider
    of the stack's platform (``SECURETRAIN_PLATFORM`` in ``stack_env``) with what it reads its evidence from, and
    the GPU it requires, if the stack has one, and the allocator setting every TEE process runs under."""
    managed = stack_identities(layout)[CVM_IDENTITY]
    assert managed.identity_header is not None  # a managed identity
    if not stack_env.get(PLATFORM_ENV):
        raise StackConfigurationError(f"the TEE needs {PLATFORM_ENV}, which the stack exports once it is up")
    platform = EmulatedPlatform.named(stack_env[PLATFORM_ENV], PLATFORM_ENV)
    evidence = _EVIDENCE[platform]
    missing = [name for name in (*_COMMON, "SECURETRAIN_KEYVAULT_RELEASE_ROOT", "SECURETRAIN_IDENTITY_ENDPOINT",
                                 *evidence) if not stack_env.get(name)]  # fmt: skip
    if missing:
        raise StackConfigurationError(f"the TEE needs {', '.join(missing)}, which no running service exports")
    return {
        **_pick(stack_env, _COMMON),
        "SECURETRAIN_KEYVAULT_RELEASE_ROOT": stack_env["SECURETRAIN_KEYVAULT_RELEASE_ROOT"],
        "SECURETRAIN_ENTRA_INSTANCE_DISCOVERY": "false",
        "IDENTITY_ENDPOINT": f"{stack_env['SECURETRAIN_IDENTITY_ENDPOINT']}/msi/token",
        "IDENTITY_HEADER": managed.identity_header,
        "SECURETRAIN_EVIDENCE_PROVIDER": platform.evidence_provider,
        **_pick(stack_env, evidence),
        **gpu_tee_environment(layout),
        **TEE_ALLOCATOR_ENVIRONMENT,
    }
