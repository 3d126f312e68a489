"""Verify an NVIDIA H100 attestation report: did this GPU, in this firmware, sign these measurements for us?

:func:`verify_gpu_report` runs NVIDIA's checks (those of its local GPU verifier, github.com/NVIDIA/nvtrust) that
need nothing but the evidence and the verifier's configuration. In order; the first that fails raises a
:class:`~securetrain.core.nvidia.errors.GpuEvidenceError` subclass naming it:

1. layout: SPDM 1.1 GET_MEASUREMENTS request and signed response, every length checked
   (:class:`~securetrain.core.nvidia.spdm.GpuAttestationReport`) — :class:`SpdmFormatError`;
2. chain: five certificates, ECDSA P-384/SHA-384 links, ending in a PINNED root, valid now
   (:meth:`~securetrain.core.nvidia.certs.GpuCertificateChain.verify`) — :class:`GpuCertificateChainError`;
3. FWID: the opaque data's FWID equals the one the leaf certificate certifies — :class:`FwidMismatch`;
4. signature: raw ECDSA P-384 r || s over SHA-384 of request and response up to the signature, with the leaf
   key — :class:`GpuReportSignatureInvalid`;
5. nonce: the request's nonce equals the one the verifier expects (for this product, derived from the CPU
   evidence's runtime data, :mod:`securetrain.core.nvidia.binding`) — :class:`GpuNonceMismatch`;
6. measurements, when reference values are given: each golden index matches
   (:class:`~securetrain.core.nvidia.reference.ReferenceMeasurements`) — :class:`MeasurementMismatch`.

Not done here because they need NVIDIA's services: certificate revocation (NVIDIA's OCSP responder) and
fetching RIMs from NVIDIA's RIM service with their signatures (see :mod:`securetrain.core.nvidia.reference`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from securetrain.core.nvidia.certs import GpuCertificateChain
from securetrain.core.nvidia.errors import GpuEvidenceError
from securetrain.core.nvidia.reference import ReferenceMeasurements
from securetrain.core.nvidia.roots import DeviceRoot
from securetrain.core.nvidia.spdm import SIGNATURE_SIZE, GpuAttestationReport

logger = logging.getLogger(__name__)

_P384_SCALAR_SIZE = SIGNATURE_SIZE // 2


class FwidMismatch(GpuEvidenceError):
    """The report's FWID is missing or differs from the one its leaf certificate was issued for."""


class GpuReportSignatureInvalid(GpuEvidenceError):
    """The report's signature does not verify with the leaf certificate's key."""


class GpuNonceMismatch(GpuEvidenceError):
    """The report answers another nonce than the one expected: it is stale or meant for another TEE."""


@dataclass(frozen=True)
class VerifiedGpuReport:
    """A GPU report whose layout, chain, FWID, signature and nonce verified (and measurements, if compared)."""

    report: GpuAttestationReport
    chain: GpuCertificateChain
    root: DeviceRoot
    reference: ReferenceMeasurements | None

    @property
    def simulated(self) -> bool:
        """True when the root is not NVIDIA's: the report comes from a simulated GPU."""
        return self.root.simulated

    def to_dict(self) -> dict[str, Any]:
        """The report's fields, the root, the reference source and whether the GPU is simulated."""
        return {
            "report": self.report.to_dict(),
            "root": self.root.to_dict(),
            "reference": None if self.reference is None else self.reference.source,
            "simulated": self.simulated,
        }


def verify_gpu_report(
    report_bytes: bytes,
    chain: GpuCertificateChain,
    trusted_roots: Collection[DeviceRoot],
    *,
    expected_nonce: bytes,
    reference: ReferenceMeasurements | None = None,
    now: datetime | None = None,
) -> VerifiedGpuReport:
    """Verify ``report_bytes`` against ``chain`` (ending in one of ``trusted_roots``) and ``expected_nonce``.

    ``reference``, when given, are the golden measurements the report must match; ``now`` (timezone-aware) is
    when the certificates must be valid, the current time by default.
    """
    report = GpuAttestationReport.from_bytes(report_bytes)
    root = chain.verify(trusted_roots, now=now or datetime.now(UTC))
    _check_fwid(report, chain)
    _check_signature(report, chain)
    if not hmac.compare_digest(report.nonce, expected_nonce):
        raise GpuNonceMismatch(
            f"GPU report answers nonce {report.nonce.hex()[:16]}..., expected {expected_nonce.hex()[:16]}...: "
            "it was not requested for this TEE's evidence"
        )
    if reference is not None:
        reference.check(report.response.measurements())
    logger.info(
        "GPU report verified: driver %s, VBIOS %s, %d measurements%s, root %s%s",
        report.response.opaque.driver_version,
        report.response.opaque.vbios_version,
        len(report.response.blocks),
        "" if reference is None else f" matching {reference.source}",
        root.name,
        " (simulated GPU)" if root.simulated else "",
    )
    return VerifiedGpuReport(report, chain, root, reference)


def _check_fwid(report: GpuAttestationReport, chain: GpuCertificateChain) -> None:
    reported = report.response.opaque.get("FWID")
    if reported is None:
        # NVIDIA's verifier skips the comparison when a report has no FWID; this one refuses, because
        # without it nothing ties the signing key's certificate to the firmware that produced the report.
        raise FwidMismatch("GPU report's opaque data has no FWID to compare with the leaf certificate")
    certified = chain.fwid()
    if not hmac.compare_digest(reported, certified):
        raise FwidMismatch(
            f"GPU report's FWID {reported.hex()[:16]}... differs from the leaf certificate's {certified.hex()[:16]}..."
        )


def _check_signature(report: GpuAttestationReport, chain: GpuCertificateChain) -> None:
    # The raw signed bytes are checked, not a re-encoding: what is verified is exactly what arrived.
    raw = report.response.signature
    signature = encode_dss_signature(
        int.from_bytes(raw[:_P384_SCALAR_SIZE], "big"), int.from_bytes(raw[_P384_SCALAR_SIZE:], "big")
    )
    try:
        chain.leaf_key().verify(signature, report.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise GpuReportSignatureInvalid(
            "GPU report signature does not verify with the leaf certificate's key: "
            "the report was altered or another GPU signed it"
        ) from None
