"""Which confidential platform the local stack emulates under its CVM: the stack's ``platform``.

- ``snp``: the simulated SEV-SNP platform as a bare SNP guest sees it: the agent asks the simulated secure
  processor for raw SNP reports (:mod:`securetrain.localstack.platform.simulated_evidence`).
- ``azure-cvm``: an Azure confidential VM, emulated: swtpm behind the paravisor (``vtpm`` service) and the IMDS
  stand-in (``imds`` service); the agent reads its evidence with the production Azure CVM provider
  (:class:`securetrain.tee.evidence.azure_cvm.AzureCvmProvider`) through the paravisor's vTPM.

``securetrain stack up --platform NAME`` or ``$SECURETRAIN_PLATFORM`` chooses it; ``up`` keeps the choice in the
state directory (:attr:`securetrain.localstack.layout.StackLayout.platform_file`) while the stack runs, so
``status``, ``down`` and a later ``up`` without a choice (the demo's) work on the platform that runs.
"""

from __future__ import annotations

import enum

from securetrain.localstack.errors import StackConfigurationError
from securetrain.localstack.layout import StackLayout

PLATFORM_ENV = "SECURETRAIN_PLATFORM"


class EmulatedPlatform(enum.Enum):
    """A platform the local CVM can run on, by its name on the command line."""

    SNP = "snp"
    AZURE_CVM = "azure-cvm"

    @property
    def description(self) -> str:
        return {
            EmulatedPlatform.SNP: "the simulated SEV-SNP platform (raw SNP reports)",
            EmulatedPlatform.AZURE_CVM: "the emulated Azure confidential VM (paravisor, vTPM, IMDS)",
        }[self]

    @property
    def evidence_provider(self) -> str:
        """The agent's evidence provider on this platform (``SECURETRAIN_EVIDENCE_PROVIDER``)."""
        return {EmulatedPlatform.SNP: "simulated", EmulatedPlatform.AZURE_CVM: "azure-cvm"}[self]

    @property
    def tee_type(self) -> str:
        """What the agent's health reports as its TEE type on this platform."""
        return {EmulatedPlatform.SNP: "sev-snp-simulated", EmulatedPlatform.AZURE_CVM: "azure-cvm"}[self]

    @classmethod
    def named(cls, name: str, source: str) -> EmulatedPlatform:
        """The platform called ``name``, which ``source`` gave; :class:`StackConfigurationError` naming the choices."""
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(platform.value for platform in cls)
            raise StackConfigurationError(f"{source} is {name!r}: the stack's platform is one of {choices}") from None


#: The platform the stack runs unless told otherwise.
DEFAULT_PLATFORM = EmulatedPlatform.AZURE_CVM


def running_platform(layout: StackLayout) -> EmulatedPlatform | None:
    """The platform the stack in ``layout`` was brought up on; None when ``down`` (or nothing) ran last."""
    try:
        name = layout.platform_file.read_text().strip()
    except FileNotFoundError:
        return None
    return EmulatedPlatform.named(name, str(layout.platform_file))
