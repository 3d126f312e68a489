"""The IMDS stand-in (:mod:`securetrain.localstack.standins.imds`) as a stack service: THIM's VCEK chain of the
simulated SEV-SNP platform and the VM's image reference, for the emulated Azure CVM's guest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import requests

from securetrain.localstack.service import HEALTH_TIMEOUT_S, Service, ServiceContext, ServiceUnhealthy, python_service_argv
from securetrain.tee.evidence.azure_cvm import THIM_PATH


def _argv(context: ServiceContext) -> Sequence[str]:
    return python_service_argv("securetrain.localstack.standins.imds", context,
                               "--snp-platform-dir", str(context.layout.snp_platform_dir))  # fmt: skip


def _health_check(context: ServiceContext) -> None:
    try:
        response = requests.get(f"{context.base_url}{THIM_PATH}", headers={"Metadata": "true"},
                                verify=str(context.ca_bundle), timeout=HEALTH_TIMEOUT_S)  # fmt: skip
        response.raise_for_status()
        vcek = response.json().get("vcekCert")
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise ServiceUnhealthy.because(exc) from exc
    if not isinstance(vcek, str) or "BEGIN CERTIFICATE" not in vcek:
        raise ServiceUnhealthy("THIM's answer holds no VCEK certificate")


def _exports(context: ServiceContext) -> Mapping[str, str]:
    return {"SECURETRAIN_IMDS_ENDPOINT": context.base_url}


IMDS = Service(
    name="imds",
    description="Azure Instance Metadata Service stand-in: THIM's VCEK chain, the VM's image reference",
    default_port=10910,
    argv=_argv,
    health_check=_health_check,
    exports=_exports,
)
