"""Verify Azure Container Instances (confidential) evidence, and give MAA's claim set for it.

Checks, in order; the first that fails raises :class:`~securetrain.core.aci.errors.AciEvidenceError`
whose ``check`` names it:

1. ``cce-policy`` — the CCE policy file, when given, reads (:mod:`~securetrain.core.aci.cce_policy`);
2. ``uvm-endorsement.cose-structure`` ... ``uvm-endorsement.x5chain`` — the endorsement decodes;
3. ``snp-report`` — the SNP report and its VCEK → ASK → ARK chain verify against the trusted AMD roots
   (:func:`securetrain.core.snp.verifier.verify_report`; the message names the SNP check that failed);
4. ``uvm-endorsement.root`` ... ``uvm-endorsement.payload`` — the endorsement verifies
   (:mod:`~securetrain.core.aci.uvm_endorsement`);
5. ``uvm-measurement`` — the endorsed launch measurement is the report's MEASUREMENT: the UVM that runs is
   the one Microsoft endorsed;
6. ``runtime-data`` — when the evidence carries runtime data, REPORT_DATA[0:32] is its SHA-256;
7. ``host-data`` — when a CCE policy is given, HOST_DATA is its SHA-256: the containers are the ones that
   policy allows. Without a policy the evidence still verifies, but the result says the workload is not
   bound (``workload_bound`` False, ``workload.bound`` false in :meth:`VerifiedAciEvidence.to_dict`): HOST_DATA
   then names a policy nobody has looked at.

The endorsement's SVN (``x-ms-sevsnpvm-guestsvn`` in its payload, 103 in the genuine one) is the UVM's
security version number, which Microsoft raises with security fixes; it is exposed, and not compared with
the report's GUEST_SVN, which is another number (2 in the same evidence). Debug, VMPL and the other policy
facts are exposed, as claims, for the caller's appraisal; this module judges genuineness, not acceptability.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from securetrain.core.aci.cce_policy import CcePolicy
from securetrain.core.aci.errors import AciEvidenceError
from securetrain.core.aci.evidence import AciEvidence, load_aci_evidence
from securetrain.core.aci.uvm_endorsement import (
    CONTAINERPLAT_AMD_UVM,
    UvmEndorsement,
    UvmEndorsementTrust,
    VerifiedUvmEndorsement,
)
from securetrain.core.attestation.claims import sevsnpvm_claims, uvm_compliance_status
from securetrain.core.snp.certs import CertificateChain
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import AttestationReport
from securetrain.core.snp.roots import AMD_ROOTS, TrustedRoot
from securetrain.core.snp.verifier import VerifiedReport, verify_report

logger = logging.getLogger(__name__)

PLATFORM = "azure-container-instances"


@dataclass(frozen=True)
class VerifiedAciEvidence:
    """ACI evidence that verified: the SNP report, the UVM endorsement, and what the evidence binds."""

    verified_report: VerifiedReport
    uvm: VerifiedUvmEndorsement
    cce_policy: CcePolicy | None
    runtime_data: bytes | None
    runtime: dict[str, Any] | None
    nonce: str | None
    checks: tuple[str, ...]

    @property
    def report(self) -> AttestationReport:
        return self.verified_report.report

    @property
    def host_data(self) -> bytes:
        """HOST_DATA: the SHA-256 of the CCE policy the UVM enforces."""
        return self.report.host_data

    @property
    def workload_bound(self) -> bool:
        """Whether HOST_DATA was matched with a CCE policy, i.e. whether the containers are known."""
        return self.cce_policy is not None

    @property
    def debug(self) -> bool:
        return self.report.policy.debug

    @property
    def vmpl(self) -> int:
        return self.report.vmpl

    @property
    def simulated(self) -> bool:
        """True when the AMD root or the UVM signer is not the genuine one."""
        return self.verified_report.simulated or self.uvm.trust.simulated

    def claims(self) -> dict[str, Any]:
        """The claims MAA's ``/attest/SevSnpVm`` gives this evidence (``x-ms-policy-hash`` and the token's
        own claims are the issuing service's)."""
        claims: dict[str, Any] = {
            "x-ms-ver": "1.0",
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-compliance-status": uvm_compliance_status(self.simulated),
            **sevsnpvm_claims(self.report),
            "x-ms-sevsnpvm-uvm-endorsement": self.uvm.claim(),
        }
        if self.runtime is not None:
            claims["x-ms-runtime"] = self.runtime
        if self.nonce is not None:
            claims["nonce"] = self.nonce
        return claims

    def to_dict(self) -> dict[str, Any]:
        """The claims and the facts behind them, JSON-ready."""
        return {
            "platform": PLATFORM,
            "simulated": self.simulated,
            "claims": self.claims(),
            "snp_root": self.verified_report.root.to_dict(),
            "uvm_endorsement": self.uvm.to_dict(),
            "workload": {
                "bound": self.workload_bound,
                "host_data": self.host_data.hex(),
                "cce_policy_sha256": None if self.cce_policy is None else self.cce_policy.sha256.hex(),
            },
            "runtime_data_bound": self.runtime_data is not None,
            "checks": list(self.checks),
        }


def verify_aci_evidence(
    evidence: AciEvidence,
    *,
    cce_policy: bytes | None,
    trusted_roots: Collection[TrustedRoot],
    uvm_trust: UvmEndorsementTrust = CONTAINERPLAT_AMD_UVM,
    now: datetime | None = None,
) -> VerifiedAciEvidence:
    """Verify ``evidence`` (checks in the module docstring); ``cce_policy`` is the policy file's bytes, or None.

    ``trusted_roots`` are the AMD roots the VCEK chain may end in; ``uvm_trust`` says whose endorsements are
    accepted (Microsoft's ContainerPlat UVMs by default); ``now`` (timezone-aware) is the verification time.
    """
    now = now or datetime.now(UTC)
    policy = None if cce_policy is None else CcePolicy.parse(cce_policy)
    endorsement = UvmEndorsement.decode(evidence.uvm_endorsement)
    try:
        chain = CertificateChain.from_pem_bundle(evidence.vcek_chain_pem)
        verified_report = verify_report(evidence.report, chain, trusted_roots, now=now)
    except SnpEvidenceError as exc:
        raise AciEvidenceError("snp-report", f"{type(exc).__name__}: {exc}") from exc
    report = verified_report.report
    uvm = endorsement.verify(uvm_trust, now=now)
    if uvm.launch_measurement != report.measurement:
        raise AciEvidenceError(
            "uvm-measurement",
            f"the endorsement is for launch measurement {uvm.launch_measurement.hex()}, but the report's "
            f"MEASUREMENT is {report.measurement.hex()}: the UVM that runs is not the one endorsed",
        )
    checks = ["cce-policy"] if policy is not None else []
    checks += ["snp-report", "uvm-endorsement", "uvm-measurement"]
    if evidence.runtime_data is not None:
        expected = hashlib.sha256(evidence.runtime_data).digest()
        if report.report_data[:32] != expected:
            raise AciEvidenceError(
                "runtime-data",
                f"REPORT_DATA[0:32] is {report.report_data[:32].hex()}, but the SHA-256 of the runtime data is "
                f"{expected.hex()}: the runtime data is not the one the UVM attested",
            )
        checks.append("runtime-data")
    if policy is not None:
        if report.host_data != policy.sha256:
            raise AciEvidenceError(
                "host-data",
                f"HOST_DATA is {report.host_data.hex()}, but the SHA-256 of the CCE policy is {policy.sha256.hex()}: "
                "the container group runs under another policy",
            )
        checks.append("host-data")
    else:
        logger.info(
            "ACI evidence verified without a CCE policy: HOST_DATA %s is not matched with any policy",
            report.host_data.hex(),
        )
    logger.info(
        "ACI evidence verified: UVM %s (SVN %d, %s), host data %s%s",
        report.measurement.hex(),
        uvm.svn,
        uvm.feed,
        report.host_data.hex(),
        " (simulated)" if verified_report.simulated or uvm_trust.simulated else "",
    )
    return VerifiedAciEvidence(
        verified_report, uvm, policy, evidence.runtime_data, evidence.runtime, evidence.nonce, tuple(checks)
    )


def verify_aci_document(
    document: Mapping[str, Any],
    *,
    cce_policy: str | bytes | None = None,
    trusted_roots: Collection[TrustedRoot] = AMD_ROOTS,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Verify a parsed evidence document or MAA request (either shape of :mod:`~securetrain.core.aci.evidence`)
    with the optional CCE policy file's text; the result of :meth:`VerifiedAciEvidence.to_dict`.

    AMD's published roots are trusted unless ``trusted_roots`` says otherwise. Raises
    :class:`~securetrain.core.aci.errors.AciEvidenceError` naming the failed check.
    """
    # surrogatepass: text that is not ASCII reaches the policy reader (which refuses it) instead of failing here.
    policy = cce_policy.encode("utf-8", "surrogatepass") if isinstance(cce_policy, str) else cce_policy
    evidence = load_aci_evidence(document)
    return verify_aci_evidence(evidence, cce_policy=policy, trusted_roots=trusted_roots, now=now).to_dict()
