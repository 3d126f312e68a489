"""The services of the local stack, in one place, and the order they start in.

Each is one :class:`~securetrain.localstack.service.Service` naming what it depends on; ``up`` starts them
after their dependencies. Which services run depends on the platform the stack emulates
(:mod:`securetrain.localstack.emulated_platform`): the ``azure-cvm`` platform adds the vTPM and IMDS, and its CVM
depends on them.
"""

from __future__ import annotations

import graphlib
from collections.abc import Sequence

from securetrain.localstack.emulated_platform import DEFAULT_PLATFORM, EmulatedPlatform
from securetrain.localstack.errors import StackConfigurationError
from securetrain.localstack.service import Service
from securetrain.localstack.services.attestation import ATTESTATION
from securetrain.localstack.services.azurite import AZURITE
from securetrain.localstack.services.cvm import cvm_service
from securetrain.localstack.services.identity import IDENTITY
from securetrain.localstack.services.imds import IMDS
from securetrain.localstack.services.keyvault import KEYVAULT
from securetrain.localstack.services.vtpm import VTPM

_AZURE_SERVICES = (AZURITE, ATTESTATION, IDENTITY, KEYVAULT)
PLATFORM_SERVICES: dict[EmulatedPlatform, tuple[Service, ...]] = {
    EmulatedPlatform.SNP: (*_AZURE_SERVICES, cvm_service(EmulatedPlatform.SNP)),
    EmulatedPlatform.AZURE_CVM: (*_AZURE_SERVICES, VTPM, IMDS, cvm_service(EmulatedPlatform.AZURE_CVM)),
}


def services_for(platform: EmulatedPlatform) -> tuple[Service, ...]:
    """The services a stack emulating ``platform`` runs."""
    return PLATFORM_SERVICES[platform]


#: The services of a stack on the default platform.
SERVICES: tuple[Service, ...] = services_for(DEFAULT_PLATFORM)

def _each_name_once() -> tuple[Service, ...]:
    by_name: dict[str, Service] = {}
    for services in PLATFORM_SERVICES.values():
        for service in services:
            by_name.setdefault(service.name, service)
    return tuple(by_name.values())


#: Every service some platform runs, each name once (``down`` stops whichever has a PID record).
ALL_SERVICES: tuple[Service, ...] = _each_name_once()


def start_order(services: Sequence[Service]) -> list[Service]:
    """``services`` ordered so that each comes after everything it depends on (stop in reverse).

    Raises:
        StackConfigurationError: two services share a name, one depends on a service not declared, or
            the dependencies form a cycle.
    """
    by_name: dict[str, Service] = {}
    for service in services:
        if service.name in by_name:
            raise StackConfigurationError(f"two stack services are named {service.name!r}")
        by_name[service.name] = service
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for service in services:
        unknown = [name for name in service.depends_on if name not in by_name]
        if unknown:
            raise StackConfigurationError(
                f"stack service {service.name!r} depends on {', '.join(unknown)}, which is not declared"
            )
        sorter.add(service.name, *service.depends_on)
    try:
        return [by_name[name] for name in sorter.static_order()]
    except graphlib.CycleError as exc:
        raise StackConfigurationError(f"stack services depend on each other in a cycle: {exc.args[1]}") from exc
