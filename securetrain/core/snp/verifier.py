"""Verify an SEV-SNP attestation report: is it what an AMD chip (or a trusted simulation) signed?

:func:`verify_report` answers only that question — layout, chain, signature — and says which trusted
root vouched for it. Whether the signed contents are acceptable (measurement, host data, debug, TCB
levels ...) is the attestation policy's question, asked by the attestation service over the report's claims,
kept apart as in the Confidential Containers Trustee split between verifier and reference values.

Checks, in order; the first that fails raises a :class:`~securetrain.core.snp.errors.SnpEvidenceError`
subclass naming it:

1. layout: exactly 1184 bytes, a supported VERSION, SIGNATURE_ALGO ECDSA P-384/SHA-384, reserved
   fields as the ABI requires (:class:`~securetrain.core.snp.report.AttestationReport`);
2. the report says the VCEK signed it (KEY_INFO.SIGNING_KEY), the only key this verifier checks;
3. the chain: ARK trusted, self-signed; ASK signed by ARK; VCEK signed by ASK; all valid now
   (:meth:`~securetrain.core.snp.certs.CertificateChain.verify`);
4. the VCEK is the one for this report: its TCB extensions equal REPORTED_TCB and its hwID equals
   CHIP_ID (unless the host masked CHIP_ID, which then must be all zero);
5. the ECDSA P-384/SHA-384 signature over bytes 0x000-0x29F verifies with the VCEK's key.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from securetrain.core.snp.certs import CertificateChain
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import SIGNED_SIZE, AttestationReport, SigningKey
from securetrain.core.snp.roots import TrustedRoot

logger = logging.getLogger(__name__)


class UnsupportedSigningKey(SnpEvidenceError):
    """The report was signed by a key other than the VCEK (a VLEK) or not signed at all."""


class VcekReportMismatch(SnpEvidenceError):
    """The VCEK certificate is for another TCB or another chip than the report."""


class ReportSignatureInvalid(SnpEvidenceError):
    """The report's signature does not verify with the VCEK's public key."""


@dataclass(frozen=True)
class VerifiedReport:
    """A report whose signature and certificate chain verified, and the trusted root they end in."""

    report: AttestationReport
    root: TrustedRoot

    @property
    def simulated(self) -> bool:
        """True when the root is not one of AMD's ARKs: the report comes from a simulated platform."""
        return self.root.simulated

    def to_dict(self) -> dict[str, Any]:
        """The report's fields, the root and whether the platform is simulated, JSON-ready."""
        return {"report": self.report.to_dict(), "root": self.root.to_dict(), "simulated": self.simulated}


def verify_report(
    report_bytes: bytes,
    chain: CertificateChain,
    trusted_roots: Collection[TrustedRoot],
    *,
    now: datetime | None = None,
) -> VerifiedReport:
    """Verify ``report_bytes`` against ``chain``, which must end in one of ``trusted_roots``.

    ``now`` (timezone-aware) is the moment at which the certificates must be valid; the current time
    by default. Returns the parsed report and its root, or raises an ``SnpEvidenceError`` subclass.
    """
    report = AttestationReport.from_bytes(report_bytes)
    if report.signing_key is not SigningKey.VCEK:
        raise UnsupportedSigningKey(
            f"report is signed by {report.signing_key.name}; only VCEK-signed reports are verified"
        )
    root = chain.verify(trusted_roots, now=now or datetime.now(UTC))
    _check_vcek_matches(report, chain)
    _check_signature(report, report_bytes[:SIGNED_SIZE], chain)
    logger.info(
        "SEV-SNP report verified: measurement %s, signed by the VCEK of chip %s..., root %s%s",
        report.measurement.hex(),
        report.chip_id[:8].hex(),
        root.name,
        " (simulated platform)" if root.simulated else "",
    )
    return VerifiedReport(report, root)


def _check_vcek_matches(report: AttestationReport, chain: CertificateChain) -> None:
    """The VCEK is derived per chip and TCB: its extensions must name this report's chip and REPORTED_TCB."""
    certified = chain.vcek.amd_tcb()
    if certified != report.reported_tcb:
        raise VcekReportMismatch(
            f"VCEK is for TCB {certified.to_dict()}, but the report's REPORTED_TCB is {report.reported_tcb.to_dict()}"
        )
    hw_id = chain.vcek.amd_hw_id()
    if report.mask_chip_key:
        # The host chose to hide the chip's identity; the ABI then requires CHIP_ID to be zero.
        if any(report.chip_id):
            raise VcekReportMismatch("report masks its chip key (MASK_CHIP_KEY) but CHIP_ID is not zero")
        logger.info("report masks CHIP_ID: the VCEK's hwID cannot be compared with it")
    elif hw_id is None:
        raise VcekReportMismatch("VCEK has no hwID extension to compare with the report's CHIP_ID")
    elif hw_id != report.chip_id:
        raise VcekReportMismatch(
            f"VCEK is for chip {hw_id.hex()[:16]}..., but the report's CHIP_ID is {report.chip_id.hex()[:16]}..."
        )


def _check_signature(report: AttestationReport, signed: bytes, chain: CertificateChain) -> None:
    # The raw signed bytes are checked, not a re-encoding: what is verified is exactly what arrived.
    key = chain.vcek_key()
    signature = encode_dss_signature(report.signature.r, report.signature.s)
    try:
        key.verify(signature, signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise ReportSignatureInvalid(
            "report signature does not verify with the VCEK public key: "
            "the report was altered or another chip signed it"
        ) from None
