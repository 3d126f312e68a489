"""The claims an SEV-SNP report gives, under the names Microsoft Azure Attestation (MAA) uses in its tokens.

One function for every place that turns a verified report into claims (the attestation service's tokens,
the Azure verifiers' claim sets), so that a field is named and encoded the same way everywhere: digests and
identifiers as lowercase hex, SVNs from REPORTED_TCB (the TCB the VCEK is derived for) as integers, policy
flags as booleans, as in MAA's ``x-ms-sevsnpvm-*`` claims. What a service adds around them (``x-ms-ver``,
attestation type, compliance status, policy hash, runtime data, nonce) is the service's business.
"""

from __future__ import annotations

from typing import Any

from securetrain.core.snp.report import AttestationReport


def report_claims(report: AttestationReport) -> dict[str, Any]:
    """MAA's ``x-ms-sevsnpvm-*`` claims for ``report`` (which must already be verified)."""
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
