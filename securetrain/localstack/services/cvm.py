"""The local confidential VM: the TEE's agent on the stack's platform (:mod:`securetrain.localstack.platform.local_cvm`).

Besides its server certificate the agent gets two client certificates for its mutual-TLS API, ``pipeline``
(Airflow) and ``monitor`` (health checks), and the settings of the services it depends on, read from their PID
records, with the ``cvm`` managed identity and the evidence provider of the platform
(:func:`securetrain.localstack.settings.tee_environment`). On the ``azure-cvm`` platform it also depends on the
``vtpm`` and ``imds`` services, which are its vTPM and its IMDS. What it exports: docs/trainer.md ("The local CVM
in the stack").
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import requests

from securetrain.localstack.emulated_platform import PLATFORM_ENV, EmulatedPlatform
from securetrain.localstack.pki import CertificateFiles, LocalCA
from securetrain.localstack.services.attestation import ATTESTATION
from securetrain.localstack.services.azurite import AZURITE
from securetrain.localstack.services.identity import IDENTITY
from securetrain.localstack.services.imds import IMDS
from securetrain.localstack.services.keyvault import KEYVAULT
from securetrain.localstack.services.vtpm import VTPM
from securetrain.localstack.service import HEALTH_TIMEOUT_S, Service, ServiceContext, ServiceUnhealthy, python_service_argv
from securetrain.localstack.data_owner import stack_host_data, stack_owner_keys
from securetrain.localstack.settings import tee_environment

PIPELINE_IDENTITY = "pipeline"
MONITOR_IDENTITY = "monitor"
_DEPENDENCIES = {
    EmulatedPlatform.SNP: (AZURITE, ATTESTATION, IDENTITY, KEYVAULT),
    EmulatedPlatform.AZURE_CVM: (AZURITE, ATTESTATION, IDENTITY, KEYVAULT, VTPM, IMDS),
}


def client_certificate(context: ServiceContext, identity: str) -> CertificateFiles:
    """The client certificate of ``identity`` for the agent's API, issued by the stack CA if not yet."""
    ca = LocalCA.load_or_create(context.layout.ca_dir)
    return ca.issue_client_certificate(context.layout.client_certs_dir, identity)


def _dependency_exports(context: ServiceContext, platform: EmulatedPlatform) -> dict[str, str]:
    """What the stack and the services the agent depends on on ``platform`` export."""
    settings = {"SECURETRAIN_CA_BUNDLE": str(context.ca_bundle), PLATFORM_ENV: platform.value}
    for service in _DEPENDENCIES[platform]:
        settings.update(service.exports(context.running(service)))
    return settings


def _argv(context: ServiceContext) -> Sequence[str]:
    for identity in (PIPELINE_IDENTITY, MONITOR_IDENTITY):
        client_certificate(context, identity)
    context.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    trusted = [argument for path in stack_owner_keys(context.layout) for argument in ("--data-owner-key", str(path))]
    return python_service_argv(
        "securetrain.localstack.platform.local_cvm", context,
        "--client-ca", str(context.ca_bundle),
        "--work-dir", str(context.data_dir),
        *trusted,
    )  # fmt: skip


def _environment(context: ServiceContext, platform: EmulatedPlatform) -> Mapping[str, str]:
    return tee_environment(_dependency_exports(context, platform), context.layout)


def _client_pair(context: ServiceContext, identity: str) -> tuple[str, str]:
    directory = context.layout.client_certs_dir
    return str(directory / f"{identity}.pem"), str(directory / f"{identity}.key")


def _health_check(context: ServiceContext, platform: EmulatedPlatform) -> None:
    try:
        response = requests.get(
            f"{context.base_url}/v1/health",
            cert=_client_pair(context, MONITOR_IDENTITY),
            verify=str(context.ca_bundle),
            timeout=HEALTH_TIMEOUT_S,
        )
        response.raise_for_status()
        tee_type = response.json().get("tee_type")
    except (requests.RequestException, ValueError) as exc:
        raise ServiceUnhealthy.because(exc) from exc
    if tee_type != platform.tee_type:
        raise ServiceUnhealthy(f"the agent reports TEE type {tee_type!r}, expected {platform.tee_type} ({platform.description})")


def _exports(context: ServiceContext) -> Mapping[str, str]:
    pipeline_cert, pipeline_key = _client_pair(context, PIPELINE_IDENTITY)
    monitor_cert, monitor_key = _client_pair(context, MONITOR_IDENTITY)
    return {
        "SECURETRAIN_CVM_ENDPOINT": context.base_url,
        "SECURETRAIN_CVM_HOST_DATA": stack_host_data(context.layout).hex(),
        "SECURETRAIN_CVM_PIPELINE_CERT": pipeline_cert,
        "SECURETRAIN_CVM_PIPELINE_KEY": pipeline_key,
        "SECURETRAIN_CVM_MONITOR_CERT": monitor_cert,
        "SECURETRAIN_CVM_MONITOR_KEY": monitor_key,
    }


def cvm_service(platform: EmulatedPlatform) -> Service:
    """The local CVM on ``platform``: its dependencies, the agent's environment and the TEE type its health must report."""
    return Service(
        name="cvm",
        description=f"the local confidential VM: trainer agent on {platform.description} (mutual TLS)",
        default_port=10600,
        argv=_argv,
        health_check=functools.partial(_health_check, platform=platform),
        environment=functools.partial(_environment, platform=platform),
        exports=_exports,
        depends_on=tuple(service.name for service in _DEPENDENCIES[platform]),
        startup_timeout_s=60.0,
    )
