"""How evidence becomes a token's claims, for every type of evidence the service takes: verify → claims → policy.

Each evidence type (:class:`EvidenceType`, MAA's attestation type: the ``/attest/{type}`` and
``/policies/{type}`` path segment) brings its own verification: parse the request, check the evidence
cryptographically against the roots the *service* trusts (AMD's, and those its configuration adds; never a
policy's), and derive the incoming claims in MAA's names. What follows is the same for all of them: the
attestation policy set for that type (:mod:`.policy_evaluation`) authorizes the claims or refuses them, its
issuance rules add claims, and the token carries the incoming claims, the issued ones, and the service's own:
``x-ms-ver``, ``x-ms-attestation-type``, ``x-ms-compliance-status``, ``x-ms-policy-hash`` (MAA's hash of the
policy that judged it), ``x-ms-runtime`` and ``nonce``. A policy cannot change a claim the service issues.

Another evidence type plugs in as one more :class:`EvidenceType` in :data:`EVIDENCE_TYPES`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from securetrain.core.aci.evidence import AciEvidence
from securetrain.core.aci.verifier import verify_aci_evidence
from securetrain.core.attestation.azure_guest import read_azure_guest_request
from securetrain.core.attestation.claims import compliance_status, platform_claim, uvm_compliance_status
from securetrain.core.azure_cvm.verifier import verify_cvm_evidence
from securetrain.core.json_input import JsonInputError, read_json_object
from securetrain.core.snp.roots import TrustedRoot
from securetrain.localstack.standins.attestation_service.evidence import (
    MAX_BODY_BYTES,
    EvidenceRefused,
    SnpEvidence,
    sev_snp_claims,
    verify_sev_snp,
)
from securetrain.localstack.standins.attestation_service.policy_evaluation import Claim, evaluate
from securetrain.localstack.standins.attestation_service.policy_language import AttestationPolicy

#: The policy of an attestation type until one is set, and after a reset: like MAA's default policies,
#: it authorizes every evidence that verifies, and issues nothing.
DEFAULT_POLICY = """version=1.0;
authorizationrules
{
    => permit();
};
issuancerules
{
};
"""


@dataclass(frozen=True)
class AttestedEvidence:
    """Evidence that verified: its incoming claims (as the token carries them), the runtime data it bound, its
    nonce, and what platform signed it (``x-securetrain-platform``) with the compliance status that earns
    (top-level ``x-ms-compliance-status``; None where MAA nests it, as for AzureGuest)."""

    claims: Mapping[str, Any]
    runtime: Mapping[str, Any]
    nonce: str | None
    platform: str
    compliance_status: str | None
    #: What the issuance log keeps about the evidence, beside the token's id and nonce.
    log_fields: Mapping[str, Any]


@dataclass(frozen=True)
class EvidenceType:
    """One kind of evidence: MAA's name for it, the API version of its request, how it is verified."""

    name: str
    api_version: str
    verify: Callable[[bytes, Collection[TrustedRoot]], AttestedEvidence]


def _verify_sev_snp_vm(body: bytes, trusted_roots: Collection[TrustedRoot]) -> AttestedEvidence:
    """A bare SEV-SNP report; or, when its ``report`` carries ``Endorsements``, an ACI utility VM's."""
    if _carries_endorsements(body):
        return _verify_aci(body, trusted_roots)
    evidence = SnpEvidence.from_body(body)
    verified = verify_sev_snp(evidence, trusted_roots)
    report = verified.report
    logged = {"measurement": report.measurement.hex(), "host_data": report.host_data.hex()}
    return AttestedEvidence(
        sev_snp_claims(report), evidence.runtime, evidence.nonce, platform_claim(verified.simulated),
        compliance_status(verified.simulated), logged,
    )  # fmt: skip


def _carries_endorsements(body: bytes) -> bool:
    """Whether the body's ``report`` decodes to an object naming ``Endorsements`` (anything unreadable is left to
    the bare SNP path, which refuses it naming what is wrong)."""
    try:
        report = read_json_object(body, max_bytes=MAX_BODY_BYTES, what="request body").get("report")
        if not isinstance(report, str):
            return False
        inner = base64.b64decode(report + "=" * (-len(report) % 4), altchars=b"-_", validate=True)
        return "Endorsements" in read_json_object(inner, max_bytes=MAX_BODY_BYTES, what="report")
    except (JsonInputError, binascii.Error, ValueError):
        return False


def _verify_aci(body: bytes, trusted_roots: Collection[TrustedRoot]) -> AttestedEvidence:
    """ACI evidence (SNP report, VCEK chain, Microsoft's UVM endorsement) by the core's verifier; the UVM signer
    is the one the core pins (Microsoft's ContainerPlat feed), whatever roots the service adds for AMD."""
    try:
        document = read_json_object(body, max_bytes=MAX_BODY_BYTES, what="request body")
    except JsonInputError as exc:
        raise EvidenceRefused("InvalidParameter", str(exc)) from None
    evidence = AciEvidence.from_maa_request(document)
    verified = verify_aci_evidence(evidence, cce_policy=None, trusted_roots=trusted_roots)
    claims = {name: value for name, value in verified.claims().items()
              if name not in ("x-ms-ver", "x-ms-compliance-status", "x-ms-runtime", "nonce")}  # fmt: skip
    report = verified.report
    logged = {"measurement": report.measurement.hex(), "host_data": report.host_data.hex(), "uvm_svn": verified.uvm.svn}
    return AttestedEvidence(
        claims, evidence.runtime or {}, evidence.nonce, platform_claim(verified.verified_report.simulated),
        uvm_compliance_status(verified.simulated), logged,
    )  # fmt: skip


def _verify_azure_guest(body: bytes, trusted_roots: Collection[TrustedRoot]) -> AttestedEvidence:
    """An Azure CVM's evidence (:mod:`securetrain.core.attestation.azure_guest`) by the core's verifier. The quote's
    nonce is the request's ``ClientPayload.nonce``, checked by ``quote-nonce`` and spent by the service; the
    runtime key is checked against the HCL user data (``user-data-key``) and listed in ``x-ms-runtime.keys``."""
    request = read_azure_guest_request(body)
    verified = verify_cvm_evidence(request.evidence, nonce=None, trusted_roots=trusted_roots)
    claims = {name: value for name, value in verified.claims().items()
              if name not in ("x-ms-ver", "x-securetrain-platform", "nonce")}  # fmt: skip
    runtime = {"client-payload": dict(request.client_payload), "keys": [request.runtime_key.to_jwk()]}
    logged = {"measurement": verified.report.measurement.hex(), "vm_id": verified.runtime_claims.vm_unique_id,
              "pcrs": list(verified.quote.pcr_indexes), "tcg_log_bytes": len(request.tcg_log)}  # fmt: skip
    return AttestedEvidence(claims, runtime, request.nonce_text, platform_claim(verified.simulated), None, logged)


SEV_SNP_VM = EvidenceType("SevSnpVm", "2022-08-01", _verify_sev_snp_vm)
AZURE_GUEST = EvidenceType("AzureGuest", "2022-08-01", _verify_azure_guest)
EVIDENCE_TYPES: Mapping[str, EvidenceType] = {kind.name: kind for kind in (SEV_SNP_VM, AZURE_GUEST)}


def policy_claims(claims: Mapping[str, Any], prefix: str = "") -> Iterator[Claim]:
    """The incoming claims as the policy sees them: a nested claim by its dotted path
    (``x-ms-isolation-tee.x-ms-compliance-status``), each value of a list as one claim of that type."""
    for name, value in claims.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            yield from policy_claims(value, f"{path}.")
        elif isinstance(value, list):
            yield from (Claim(path, item) for item in value if isinstance(item, (str, int)))
        elif isinstance(value, (str, int)):
            yield Claim(path, value)


def token_claims(evidence: AttestedEvidence, policy: AttestationPolicy) -> dict[str, Any]:
    """The claims of the token ``evidence`` earns under ``policy`` (all but the JWT's own: issuer, times, id);
    :class:`~.policy_evaluation.PolicyDenied` naming the rule if the policy does not authorize it."""
    evaluation = evaluate(policy, tuple(policy_claims(evidence.claims)))
    service: dict[str, Any] = {
        **evidence.claims,
        "x-ms-ver": "1.0",
        "x-securetrain-platform": evidence.platform,
        "x-ms-policy-hash": policy.hash,
        "x-ms-runtime": dict(evidence.runtime),
    }
    if evidence.compliance_status is not None:
        service["x-ms-compliance-status"] = evidence.compliance_status
    if evidence.nonce is not None:
        service["nonce"] = evidence.nonce
    return {**evaluation.issued, **service}
