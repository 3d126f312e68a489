"""The attestation service (the MAA stand-in, :mod:`securetrain.localstack.standins.attestation_service`) as a stack service.

The service trusts the simulated SEV-SNP platform's root by configuration (``--trust-root``), never by policy.
What it accepts is its SevSnpVm attestation policy, in Azure Attestation's policy language: the first ``up``
writes the approved one, ``<state>/policies/sevsnpvm-attestation-policy.txt``, from the reference values of the
moment (:func:`sev_snp_policy`: no debug, no migration agent, VMPL 0, the local CVM's launch measurement,
HOST_DATA of the workload installed then, the simulated platform's TCB as the minimum), and every ``up`` sets
it through ``azure-security-attestation``'s ``AttestationAdministrationClient`` as the data owner when another
is in force. The file is kept: approving a changed trainer is an explicit act (docs/local-stack.md, "After
changing trainer code"). The approved release policy pins the file's ``x-ms-policy-hash``
(:func:`release_policy_for`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from azure.core.credentials import TokenCredential
from azure.security.attestation import AttestationAdministrationClient, AttestationPolicyToken
from cryptography.hazmat.primitives import hashes

from securetrain.core.approved_release_policies import (
    AzureCvmReferenceValues,
    ReferenceValues,
    SnpReferenceValues,
    approved_release_policy,
)
from securetrain.core.attestation.claims import ATTESTED_PCR_VALUES, pcr_claim_name, pcr_claim_value
from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.azure_cvm.workload import WORKLOAD_PCR, workload_pcr_value
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.snp.report import TcbVersion
from securetrain.localstack.data_owner import stack_host_data
from securetrain.localstack.emulated_platform import EmulatedPlatform, running_platform
from securetrain.localstack.errors import StackConfigurationError
from securetrain.localstack.identities import DATA_OWNER_IDENTITY, LOCAL_TENANT, application_credential
from securetrain.localstack.layout import StackLayout, write_file
from securetrain.localstack.platform.local_cvm import LAUNCH_MEASUREMENT
from securetrain.localstack.platform.snp_platform import DEFAULT_TCB, SimulatedSnpPlatform
from securetrain.localstack.service import Service, ServiceContext, check_openid_issuer, python_service_argv
from securetrain.localstack.stack_gpu import gpu_service_arguments
from securetrain.localstack.services.identity import IDENTITY, authority, stack_identities
from securetrain.localstack.standins.attestation_service.appraisal import AZURE_GUEST, SEV_SNP_VM
from securetrain.localstack.standins.attestation_service.policy_language import AttestationPolicy, PolicyInvalid
from securetrain.localstack.standins.identity.app import token_issuer

log = logging.getLogger(__name__)

#: Who manages the attestation policies: the data owner, whose reviewers approve what the TEE may run.
POLICY_ADMINISTRATOR = DATA_OWNER_IDENTITY
_MEASUREMENT = "x-ms-sevsnpvm-launchmeasurement"
_HOST_DATA = "x-ms-sevsnpvm-hostdata"


def attestation_policy_path(layout: StackLayout) -> Path:
    return layout.policies_dir / "sevsnpvm-attestation-policy.txt"


def azure_guest_policy_path(layout: StackLayout) -> Path:
    return layout.policies_dir / "azureguest-attestation-policy.txt"


def attestation_roles_path(layout: StackLayout) -> Path:
    return layout.policies_dir / "attestation-roles.json"


def sev_snp_policy(measurements: Collection[bytes], host_data: Collection[bytes], min_tcb: TcbVersion) -> str:
    """An attestation policy that authorizes a non-debuggable SEV-SNP guest without a migration agent, at VMPL 0,
    running one of ``measurements`` with one of ``host_data``, its reported TCB at or above ``min_tcb``."""
    rules = []
    for measurement in sorted(measurements):
        for data in sorted(host_data):
            conditions = [
                '[type=="x-ms-sevsnpvm-is-debuggable", value==false]',
                '[type=="x-ms-sevsnpvm-migration-allowed", value==false]',
                '[type=="x-ms-sevsnpvm-vmpl", value==0]',
                f'[type=="{_MEASUREMENT}", value=="{measurement.hex()}"]',
                f'[type=="{_HOST_DATA}", value=="{data.hex()}"]',
                f'[type=="x-ms-sevsnpvm-bootloader-svn", value>={min_tcb.bootloader}]',
                f'[type=="x-ms-sevsnpvm-tee-svn", value>={min_tcb.tee}]',
                f'[type=="x-ms-sevsnpvm-snpfw-svn", value>={min_tcb.snp}]',
                f'[type=="x-ms-sevsnpvm-microcode-svn", value>={min_tcb.microcode}]',
            ]
            rules.append("    " + " &&\n    ".join(conditions) + " => permit();\n")
    return (
        "version=1.0;\nauthorizationrules\n{\n"
        "    // securetrain's approved SEV-SNP workloads: no debugging, no migration agent, VMPL 0, an approved\n"
        "    // launch measurement and HOST_DATA (the workload manifest's digest), firmware at or above the minimum TCB.\n"
        + "".join(rules)
        + "};\nissuancerules\n{\n};\n"
    )


def azure_guest_policy(measurements: Collection[bytes], workload_pcr_values: Collection[bytes]) -> str:
    """An AzureGuest attestation policy that authorizes a non-debuggable confidential VM whose paravisor has one of
    ``measurements`` and whose workload PCR holds one of ``workload_pcr_values`` (the measured workload)."""
    pcr = f"{ATTESTED_PCR_VALUES}.{pcr_claim_name(WORKLOAD_PCR)}"
    rules = [
        f'    [type=="x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable", value==false] &&\n'
        f'    [type=="x-ms-isolation-tee.{_MEASUREMENT}", value=="{measurement.hex()}"] &&\n'
        f'    [type=="{pcr}", value=="{pcr_claim_value(value)}"] => permit();\n'
        for measurement in sorted(measurements) for value in sorted(workload_pcr_values)
    ]  # fmt: skip
    return (
        "version=1.0;\nauthorizationrules\n{\n"
        "    // securetrain's approved workloads on an Azure confidential VM: no debugging, an approved paravisor\n"
        f"    // (launch measurement), and the approved workload measured into PCR {WORKLOAD_PCR} at boot.\n"
        + "".join(rules)
        + "};\nissuancerules\n{\n};\n"
    )


def _local_policy(path: Path, make: Callable[[], str]) -> str:
    """The policy in ``path``, written by ``make`` on first use and read from the file afterwards."""
    if not path.exists():
        write_file(path, make().encode("ascii"), mode=0o644)
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise StackConfigurationError(f"cannot read the attestation policy {path}: {exc}") from None


def local_attestation_policy(layout: StackLayout) -> str:
    """The local stack's approved SevSnpVm attestation policy (the ``snp`` platform's)."""
    return _local_policy(
        attestation_policy_path(layout),
        lambda: sev_snp_policy({LAUNCH_MEASUREMENT}, {stack_host_data(layout)}, DEFAULT_TCB),
    )


def local_azure_guest_policy(layout: StackLayout) -> str:
    """The local stack's approved AzureGuest attestation policy (the ``azure-cvm`` platform's): the emulated
    paravisor's launch measurement, the workload of the moment measured into its PCR."""
    return _local_policy(
        azure_guest_policy_path(layout),
        lambda: azure_guest_policy({LAUNCH_MEASUREMENT}, {workload_pcr_value(stack_host_data(layout))}),
    )


def approved_reference_values(policy_text: str) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The launch measurements and HOST_DATA values ``policy_text`` permits (each must be pinned by every
    permit rule, as :func:`sev_snp_policy` does); :class:`StackConfigurationError` if it pins none."""
    try:
        policy = AttestationPolicy.parse(policy_text)
    except PolicyInvalid as exc:
        raise StackConfigurationError(f"the approved attestation policy is not valid: {exc}") from None
    pinned = []
    for claim, size in ((_MEASUREMENT, 48), (_HOST_DATA, 32)):
        values = policy.values_required(claim)
        if not values or not all(isinstance(value, str) and len(value) == 2 * size for value in values):
            raise StackConfigurationError(
                f"the approved attestation policy does not pin {claim} to {size}-byte hex values in every permit rule"
            )
        try:
            pinned.append(frozenset(bytes.fromhex(str(value)) for value in values))
        except ValueError:
            raise StackConfigurationError(f"the approved attestation policy pins {claim} to a value that is not hex") from None
    return pinned[0], pinned[1]


def snp_reference_values(attestation_authority: str, policy_text: str) -> SnpReferenceValues:
    """The ``snp`` platform's reference values approving what ``policy_text`` approves, in tokens from
    ``attestation_authority`` (the simulated platform's compliance status)."""
    measurements, host_data = approved_reference_values(policy_text)
    return SnpReferenceValues(
        attestation_authority=attestation_authority, attestation_policy=policy_text, simulated=True,
        launch_measurements=frozenset(value.hex() for value in measurements),
        host_data=frozenset(value.hex() for value in host_data),
    )  # fmt: skip


def release_policy_for(attestation_authority: str, policy_text: str) -> ReleasePolicy:
    """The ``snp`` platform's release policy approving what ``policy_text`` approves (:func:`snp_reference_values`)."""
    return approved_release_policy(snp_reference_values(attestation_authority, policy_text))


def azure_cvm_reference_values(attestation_authority: str, policy_text: str) -> AzureCvmReferenceValues:
    """The ``azure-cvm`` platform's reference values approving the workload PCR values ``policy_text`` pins."""
    try:
        policy = AttestationPolicy.parse(policy_text)
    except PolicyInvalid as exc:
        raise StackConfigurationError(f"the approved AzureGuest attestation policy is not valid: {exc}") from None
    claim = f"{ATTESTED_PCR_VALUES}.{pcr_claim_name(WORKLOAD_PCR)}"
    values = policy.values_required(claim)
    try:
        pinned = frozenset(base64.b64decode(str(value), validate=True).hex() for value in values or ())
    except binascii.Error:
        pinned = frozenset()
    if not pinned or any(len(value) != 64 for value in pinned):
        raise StackConfigurationError(f"the approved AzureGuest attestation policy does not pin {claim} in every permit rule")
    return AzureCvmReferenceValues(attestation_authority=attestation_authority, attestation_policy=policy_text,
                                   simulated=True, workload_pcr_values=pinned)  # fmt: skip


def local_reference_values(layout: StackLayout, attestation_authority: str) -> ReferenceValues:
    """The local stack's approved workload on the platform it runs on, as a release policy's reference values."""
    if running_platform(layout) is EmulatedPlatform.AZURE_CVM:
        return azure_cvm_reference_values(attestation_authority, local_azure_guest_policy(layout))
    return snp_reference_values(attestation_authority, local_attestation_policy(layout))


def local_release_policy(layout: StackLayout, attestation_authority: str, *, contract_digest: str | None = None) -> ReleasePolicy:
    """The local stack's approved release policy for the platform it runs on; with ``contract_digest``, for a KEK
    released only to that workload enforcing that contract."""
    return approved_release_policy(local_reference_values(layout, attestation_authority), contract_digest=contract_digest)


def write_attestation_roles(layout: StackLayout) -> None:
    """Who may manage the attestation policies: the data owner, with the built-in role "Attestation Contributor"."""
    administrator = stack_identities(layout)[POLICY_ADMINISTRATOR]
    document = {"assignments": [{"principalId": administrator.object_id, "principalName": POLICY_ADMINISTRATOR,
                                 "role": "Attestation Contributor"}]}  # fmt: skip
    write_file(attestation_roles_path(layout), json.dumps(document, indent=2).encode(), mode=0o644)


def apply_attestation_policy(client: AttestationAdministrationClient, attestation_type: str, policy_text: str) -> str:
    """Make ``policy_text`` the policy in force for ``attestation_type``, through the SDK, unless it already is;
    its hash."""
    current, _ = client.get_policy(attestation_type)
    if current == policy_text:
        return maa_policy_hash(policy_text)
    result, _ = client.set_policy(attestation_type, policy_text)
    # What the service says it received is what was sent: SHA-256 of the unsigned policy JWS.
    digest = hashes.Hash(hashes.SHA256())
    digest.update(AttestationPolicyToken(policy_text).to_jwt_string().encode("utf-8"))
    if result.policy_token_hash != digest.finalize():
        raise StackConfigurationError("the attestation service acknowledged another policy than the one sent")
    log.info("attestation policy for %s set: x-ms-policy-hash %s", attestation_type, maa_policy_hash(policy_text))
    return maa_policy_hash(policy_text)


def policy_administration_client(
    endpoint: str, credential: TokenCredential, ca_bundle: Path
) -> AttestationAdministrationClient:
    """``azure-security-attestation``'s policy client of the attestation service at ``endpoint``: TLS verified
    against ``ca_bundle``, and its answers only if signed by a key the service publishes, naming it as issuer."""
    return AttestationAdministrationClient(endpoint, credential, connection_verify=str(ca_bundle),
                                           validate_issuer=True, issuer=endpoint)  # fmt: skip


def _argv(context: ServiceContext) -> Sequence[str]:
    local_attestation_policy(context.layout)
    local_azure_guest_policy(context.layout)
    write_attestation_roles(context.layout)
    platform = SimulatedSnpPlatform.load_or_create(context.layout.snp_platform_dir)
    return python_service_argv(
        "securetrain.localstack.standins.attestation_service", context,
        "--state-dir", str(context.data_dir),
        "--trust-root", str(platform.root_certificate_path),
        *gpu_service_arguments(context.layout, context.data_dir),
        "--identity-authority", authority(context.running(IDENTITY)),
        "--identity-issuer", token_issuer(LOCAL_TENANT),
        "--ca-bundle", str(context.ca_bundle),
        "--roles", str(attestation_roles_path(context.layout)),
    )  # fmt: skip


def _health_check(context: ServiceContext) -> None:
    check_openid_issuer(context, f"{context.base_url}/.well-known/openid-configuration", context.base_url)


def _exports(context: ServiceContext) -> Mapping[str, str]:
    identity = context.running(IDENTITY)
    administrator = stack_identities(context.layout)[POLICY_ADMINISTRATOR]
    credential = application_credential(administrator, identity.base_url, context.ca_bundle)
    with credential, policy_administration_client(context.base_url, credential, context.ca_bundle) as client:
        policy_hash = apply_attestation_policy(client, SEV_SNP_VM.name, local_attestation_policy(context.layout))
        apply_attestation_policy(client, AZURE_GUEST.name, local_azure_guest_policy(context.layout))
    return {
        "SECURETRAIN_ATTESTATION_ENDPOINT": context.base_url,
        "SECURETRAIN_ATTESTATION_LOG": str(context.data_dir / "issuance.jsonl"),
        "SECURETRAIN_ATTESTATION_POLICY": str(attestation_policy_path(context.layout)),
        "SECURETRAIN_ATTESTATION_POLICY_HASH": policy_hash,
        "SECURETRAIN_SNP_PLATFORM_DIR": str(context.layout.snp_platform_dir),
        "SECURETRAIN_CVM_LAUNCH_MEASUREMENT": LAUNCH_MEASUREMENT.hex(),
    }


ATTESTATION = Service(
    name="attestation",
    description="Azure Attestation (MAA) stand-in for SEV-SNP VMs: attestation, policy management",
    default_port=10443,
    argv=_argv,
    health_check=_health_check,
    exports=_exports,
    depends_on=(IDENTITY.name,),
)
