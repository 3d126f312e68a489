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

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from securetrain.core.attestation.claims import compliance_status, platform_claim
from securetrain.core.snp.roots import TrustedRoot
from securetrain.localstack.standins.attestation_service.evidence import SnpEvidence, sev_snp_claims, verify_sev_snp
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
    """Evidence that verified: its incoming claims, the runtime data it bound, its nonce, and what platform
    signed it (``x-securetrain-platform``) with the compliance status that earns (``x-ms-compliance-status``)."""

    claims: tuple[Claim, ...]
    runtime: Mapping[str, Any]
    nonce: str | None
    platform: str
    compliance_status: str
    #: What the issuance log keeps about the evidence, beside the token's id and nonce.
    log_fields: Mapping[str, Any]


@dataclass(frozen=True)
class EvidenceType:
    """One kind of evidence: MAA's name for it, the API version of its request, how it is verified."""

    name: str
    api_version: str
    verify: Callable[[bytes, Collection[TrustedRoot]], AttestedEvidence]


def _verify_sev_snp_vm(body: bytes, trusted_roots: Collection[TrustedRoot]) -> AttestedEvidence:
    evidence = SnpEvidence.from_body(body)
    verified = verify_sev_snp(evidence, trusted_roots)
    report = verified.report
    logged = {"measurement": report.measurement.hex(), "host_data": report.host_data.hex()}
    return AttestedEvidence(
        sev_snp_claims(report), evidence.runtime, evidence.nonce, platform_claim(verified.simulated),
        compliance_status(verified.simulated), logged,
    )  # fmt: skip


SEV_SNP_VM = EvidenceType("SevSnpVm", "2022-08-01", _verify_sev_snp_vm)
EVIDENCE_TYPES: Mapping[str, EvidenceType] = {kind.name: kind for kind in (SEV_SNP_VM,)}


def token_claims(evidence: AttestedEvidence, policy: AttestationPolicy) -> dict[str, Any]:
    """The claims of the token ``evidence`` earns under ``policy`` (all but the JWT's own: issuer, times, id);
    :class:`~.policy_evaluation.PolicyDenied` naming the rule if the policy does not authorize it."""
    evaluation = evaluate(policy, evidence.claims)
    service: dict[str, Any] = {
        **{claim.type: claim.value for claim in evidence.claims},
        "x-ms-ver": "1.0",
        "x-ms-compliance-status": evidence.compliance_status,
        "x-securetrain-platform": evidence.platform,
        "x-ms-policy-hash": policy.hash,
        "x-ms-runtime": dict(evidence.runtime),
    }
    if evidence.nonce is not None:
        service["nonce"] = evidence.nonce
    return {**evaluation.issued, **service}
