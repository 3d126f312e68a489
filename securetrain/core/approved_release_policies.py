"""The approved Key Vault release policy of each TEE platform, built from the approved reference values.

One function, :func:`approved_release_policy`, turns a platform's reference values (a pydantic model, so they
can live in a JSON file both sides read) into the policy a KEK is created under; Airflow, which checks the KEK
before a run, and the data owner's tooling, which creates it, therefore produce the same document. Each policy
pins, in the claims that platform's Azure Attestation (MAA) token carries:

========== ==================================================================================================
``snp``    bare SEV-SNP (configfs-tsm; simulated locally), MAA ``/attest/SevSnpVm``: ``x-ms-attestation-type``
           ``sevsnpvm``, the compliance status, not debuggable, an approved launch measurement and HOST_DATA
``azure-   Azure confidential VM, MAA ``/attest/AzureGuest``: ``x-ms-attestation-type`` ``azurevm``; in
cvm``      ``x-ms-isolation-tee``: ``sevsnpvm``, ``azure-compliant-cvm``, not debuggable; the workload's PCR
           (:data:`~securetrain.core.azure_cvm.workload.WORKLOAD_PCR`) at an approved value in
           ``x-ms-azurevm-attested-pcr-values``
``azure-   Azure Container Instances, MAA ``/attest/SevSnpVm``: ``sevsnpvm``, ``azure-compliant-uvm``, not
aci``      debuggable, VMPL 0 (Microsoft's own ACI release policies pin it), HOST_DATA = SHA-256 of an approved
           CCE policy
========== ==================================================================================================

and, on every platform, ``x-ms-policy-hash``: MAA's hash of the approved attestation policy text, so a token
issued under any other attestation policy releases nothing. A simulated platform's compliance status
(``simulated=True``) is never MAA's, so a production policy refuses simulated evidence without knowing about it.

Only ``equals`` conditions with string values, in one ``allOf`` per authority rule, are used: the only
construct whose evaluation Key Vault documents (:mod:`securetrain.core.release_policy`). Several approved values
(two measurements, two workloads) therefore become several authority rules for the same authority, one per
combination, never a nested ``anyOf``; every built policy passes :func:`~securetrain.core.release_policy.require_documented`.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from securetrain.core.attestation.claims import (
    ATTESTED_PCR_VALUES,
    compliance_status,
    pcr_claim_name,
    pcr_claim_value,
    uvm_compliance_status,
)
from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.azure_cvm.workload import WORKLOAD_PCR
from securetrain.core.release_policy import (
    AuthorityRule,
    Condition,
    Group,
    ReleasePolicy,
    ReleasePolicyInvalid,
    require_documented,
)

#: Lowercase hex of a given size in bytes: the form MAA writes byte-string claims in, so the vault's comparison
#: (exact or not: undocumented) and :func:`~securetrain.core.release_policy.evaluate` agree.
Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Hex48 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{96}$")]
HttpsUrl = Annotated[str, StringConstraints(pattern=r"^https://[^\s/]+(/[^\s]*)?$")]
#: MAA's text for a boolean claim in an ``equals`` value, as Microsoft's release policies write it.
_FALSE = "false"
_ISOLATION_TEE = "x-ms-isolation-tee"


class _PlatformReferenceValues(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    #: The attestation service (MAA instance) whose tokens the vault accepts: the tokens' ``iss``.
    attestation_authority: HttpsUrl
    #: The approved attestation policy's text, pinned through its ``x-ms-policy-hash``.
    attestation_policy: str = Field(min_length=1)
    #: Evidence from a simulated platform: its compliance status is the simulation's, never MAA's.
    simulated: bool = False

    def _policy_hash(self) -> Condition:
        return Condition("x-ms-policy-hash", "equals", maa_policy_hash(self.attestation_policy))


class SnpReferenceValues(_PlatformReferenceValues):
    """Bare SEV-SNP: the approved launch measurements and HOST_DATA values (48 and 32 bytes, lowercase hex)."""

    platform: Literal["snp"] = "snp"
    launch_measurements: frozenset[Hex48] = Field(min_length=1)
    host_data: frozenset[Hex32] = Field(min_length=1)

    def condition_sets(self) -> list[tuple[Condition, ...]]:
        """The conditions of each authority rule: one rule per combination of approved values."""
        common = (
            Condition("x-ms-attestation-type", "equals", "sevsnpvm"),
            Condition("x-ms-compliance-status", "equals", compliance_status(self.simulated)),
            self._policy_hash(),
            Condition("x-ms-sevsnpvm-is-debuggable", "equals", _FALSE),
        )
        return [
            (*common, Condition("x-ms-sevsnpvm-launchmeasurement", "equals", measurement),
             Condition("x-ms-sevsnpvm-hostdata", "equals", host_data))
            for measurement, host_data in itertools.product(sorted(self.launch_measurements), sorted(self.host_data))
        ]  # fmt: skip


class AzureCvmReferenceValues(_PlatformReferenceValues):
    """Azure confidential VM: the approved values of the workload's PCR (SHA-256 bank, lowercase hex; for a
    workload measurement, :func:`securetrain.core.azure_cvm.workload.workload_pcr_value`)."""

    platform: Literal["azure-cvm"] = "azure-cvm"
    workload_pcr_values: frozenset[Hex32] = Field(min_length=1)
    workload_pcr: int = Field(default=WORKLOAD_PCR, ge=0, le=23)

    def condition_sets(self) -> list[tuple[Condition, ...]]:
        """The conditions of each authority rule: one rule per combination of approved values."""
        common = (
            Condition("x-ms-attestation-type", "equals", "azurevm"),
            Condition(f"{_ISOLATION_TEE}.x-ms-attestation-type", "equals", "sevsnpvm"),
            Condition(f"{_ISOLATION_TEE}.x-ms-compliance-status", "equals", compliance_status(self.simulated)),
            Condition(f"{_ISOLATION_TEE}.x-ms-sevsnpvm-is-debuggable", "equals", _FALSE),
            self._policy_hash(),
        )
        claim = f"{ATTESTED_PCR_VALUES}.{pcr_claim_name(self.workload_pcr)}"
        return [
            (*common, Condition(claim, "equals", pcr_claim_value(bytes.fromhex(value))))
            for value in sorted(self.workload_pcr_values)
        ]


class AciReferenceValues(_PlatformReferenceValues):
    """Azure Container Instances: SHA-256 of each approved CCE policy (lowercase hex), which ACI makes HOST_DATA."""

    platform: Literal["azure-aci"] = "azure-aci"
    cce_policy_sha256: frozenset[Hex32] = Field(min_length=1)

    def condition_sets(self) -> list[tuple[Condition, ...]]:
        """The conditions of each authority rule: one rule per combination of approved values."""
        common = (
            Condition("x-ms-attestation-type", "equals", "sevsnpvm"),
            Condition("x-ms-compliance-status", "equals", uvm_compliance_status(self.simulated)),
            Condition("x-ms-sevsnpvm-is-debuggable", "equals", _FALSE),
            # Microsoft's ACI release policies pin VMPL 0 so that a report the host asked for at another VMPL
            # does not qualify (microsoft/confidential-sidecar-containers, "Add x-ms-sevsnpvm-vmpl=0 claim").
            Condition("x-ms-sevsnpvm-vmpl", "equals", "0"),
            self._policy_hash(),
        )
        return [
            (*common, Condition("x-ms-sevsnpvm-hostdata", "equals", digest)) for digest in sorted(self.cce_policy_sha256)
        ]


ReferenceValues = Annotated[
    Union[SnpReferenceValues, AzureCvmReferenceValues, AciReferenceValues], Field(discriminator="platform")
]
_REFERENCE_VALUES: TypeAdapter[ReferenceValues] = TypeAdapter(ReferenceValues)
_CONTRACT_DIGEST: TypeAdapter[str] = TypeAdapter(Hex32)


def reference_values_from_json(text: bytes | str) -> ReferenceValues:
    """A platform's reference values from their JSON document (``platform`` says which);
    :class:`~securetrain.core.release_policy.ReleasePolicyInvalid` names what is wrong."""
    try:
        return _REFERENCE_VALUES.validate_json(text)
    except ValidationError as exc:
        raise ReleasePolicyInvalid(f"the approved reference values are not valid: {exc}") from None


#: The contract a governed KEK's policy names until its owner binds it to a signed one: the digest of no
#: contract, so no TEE's token carries it and nothing is released (:func:`securetrain.core.keyvault.create_contract_kek`).
UNBOUND_CONTRACT = "0" * 64


def contract_claim(platform: str) -> str:
    """The claim in which ``platform``'s token carries the digest of the contract the TEE enforces.

    The TEE puts it in the runtime data it attests (``contract``), which MAA repeats as ``x-ms-runtime`` on
    SevSnpVm tokens; an Azure CVM's guest sends it in its client payload, which MAA repeats as
    ``x-ms-runtime.client-payload`` (docs/governance.md, "Bound into key release")."""
    return "x-ms-runtime.client-payload.contract" if platform == "azure-cvm" else "x-ms-runtime.contract"


def approved_release_policy(reference: ReferenceValues, *, contract_digest: str | None = None) -> ReleasePolicy:
    """The release policy approving what ``reference`` approves, on its platform (module docstring).

    With ``contract_digest`` every rule also requires the token's contract claim (:func:`contract_claim`) to
    name that contract: the key goes only to an approved workload that is enforcing the owner's contract.
    """
    authority = reference.attestation_authority.rstrip("/")
    bound: tuple[Condition, ...] = ()
    if contract_digest is not None:
        bound = (Condition(contract_claim(reference.platform), "equals", _CONTRACT_DIGEST.validate_python(contract_digest)),)
    rules = tuple(
        AuthorityRule(authority, Group("allOf", (*conditions, *bound))) for conditions in reference.condition_sets()
    )
    return require_documented(ReleasePolicy(rules))
