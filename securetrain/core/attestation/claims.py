"""Azure Attestation's (MAA) claim vocabulary for SEV-SNP: names and values filled from a verified report.

One place says how a report's fields become ``x-ms-sevsnpvm-*`` claims, for every issuer of claims in the
product: the attestation stand-in's ``SevSnpVm`` tokens put them at the top level, and the Azure CVM
verifier's ``AzureGuest`` claim set nests them in ``x-ms-isolation-tee``, as MAA does.

Whether a platform is genuine is a claim too: MAA's compliance status for genuine Azure confidential VM
hardware is ``azure-compliant-cvm``, for an Azure Container Instances utility VM ``azure-compliant-uvm``; evidence
rooted in the local stack's simulated platform (or, for ACI, a UVM endorsement of a simulated signer) never
earns either, so a production release policy refuses it without knowing about simulations.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from securetrain.core.azure_cvm.workload import WORKLOAD_PCR
from securetrain.core.snp.report import AttestationReport

AZURE_COMPLIANT_CVM = "azure-compliant-cvm"
AZURE_COMPLIANT_UVM = "azure-compliant-uvm"
#: The compliance statuses of evidence rooted in a simulated platform (never MAA's).
SIMULATED_CVM = "securetrain-simulated-cvm"
SIMULATED_UVM = "securetrain-simulated-uvm"


def compliance_status(simulated: bool) -> str:
    """``x-ms-compliance-status`` for a confidential VM: MAA's value unless the platform is simulated."""
    return SIMULATED_CVM if simulated else AZURE_COMPLIANT_CVM


def uvm_compliance_status(simulated: bool) -> str:
    """``x-ms-compliance-status`` for an ACI utility VM: MAA's value unless the platform or UVM signer is simulated."""
    return SIMULATED_UVM if simulated else AZURE_COMPLIANT_UVM


def platform_claim(simulated: bool) -> str:
    """``x-securetrain-platform``: whether the report came from AMD hardware or the simulated platform."""
    return "simulated" if simulated else "amd-sev-snp"


#: The AzureGuest claim holding the quoted PCR values, one member ``pcr<index>`` each (SHA-256 bank, base64).
ATTESTED_PCR_VALUES = "x-ms-azurevm-attested-pcr-values"


def pcr_claim_name(index: int) -> str:
    """The member of :data:`ATTESTED_PCR_VALUES` holding PCR ``index``."""
    return f"pcr{index}"


def pcr_claim_value(value: bytes) -> str:
    """A PCR value as :data:`ATTESTED_PCR_VALUES` writes it: standard base64."""
    return base64.b64encode(value).decode("ascii")


def attested_pcr_values(pcrs: Mapping[int, bytes]) -> dict[str, str]:
    """The :data:`ATTESTED_PCR_VALUES` claim for quoted PCR values."""
    return {pcr_claim_name(index): pcr_claim_value(value) for index, value in pcrs.items()}


def sevsnpvm_claims(report: AttestationReport) -> dict[str, Any]:
    """MAA's ``x-ms-sevsnpvm-*`` claims for a verified report (byte strings as lowercase hex)."""
    return {
        "x-ms-sevsnpvm-authorkeydigest": report.author_key_digest.hex(),
        "x-ms-sevsnpvm-bootloader-svn": report.reported_tcb.bootloader,
        "x-ms-sevsnpvm-familyId": report.family_id.hex(),
        "x-ms-sevsnpvm-guestsvn": report.guest_svn,
        "x-ms-sevsnpvm-hostdata": report.host_data.hex(),
        "x-ms-sevsnpvm-idkeydigest": report.id_key_digest.hex(),
        "x-ms-sevsnpvm-imageId": report.image_id.hex(),
        "x-ms-sevsnpvm-is-debuggable": report.policy.debug,
        "x-ms-sevsnpvm-launchmeasurement": report.measurement.hex(),
        "x-ms-sevsnpvm-microcode-svn": report.reported_tcb.microcode,
        "x-ms-sevsnpvm-migration-allowed": report.policy.migrate_ma,
        "x-ms-sevsnpvm-reportdata": report.report_data.hex(),
        "x-ms-sevsnpvm-reportid": report.report_id.hex(),
        "x-ms-sevsnpvm-smt-allowed": report.policy.flag("smt"),
        "x-ms-sevsnpvm-snpfw-svn": report.reported_tcb.snp,
        "x-ms-sevsnpvm-tee-svn": report.reported_tcb.tee,
        "x-ms-sevsnpvm-vmpl": report.vmpl,
    }


def workload_binding(claims: Mapping[str, Any]) -> str:
    """What in a token's ``claims`` binds the workload, for people: the measured-boot PCR of an Azure CVM
    (``azurevm``, its SEV-SNP claims nested in ``x-ms-isolation-tee``), else HOST_DATA; with the launch measurement."""
    tee = claims.get("x-ms-isolation-tee")
    snp = tee if isinstance(tee, Mapping) else claims
    pcrs = claims.get(ATTESTED_PCR_VALUES)
    if isinstance(pcrs, Mapping):
        binding = f"workload PCR {WORKLOAD_PCR} {pcrs.get(pcr_claim_name(WORKLOAD_PCR))}"
    else:
        binding = f"HOST_DATA {snp.get('x-ms-sevsnpvm-hostdata')}"
    return f"{binding}, launch measurement {snp.get('x-ms-sevsnpvm-launchmeasurement')}"
