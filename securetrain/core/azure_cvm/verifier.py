"""Verify Azure confidential VM evidence: is it what an AMD chip, through Azure's paravisor and vTPM, signed?

:func:`verify_cvm_evidence` verifies what is signed or bound — the SNP report, the runtime claims, the quote
and its signature, the PCR values, the AK's certificate and public area, the nonce — whatever shape it came
in (:class:`~securetrain.core.azure_cvm.evidence.CvmEvidence`: the evidence document, or MAA's AzureGuest
request). Reading the evidence runs the first checks; the first that fails raises
:class:`~securetrain.core.azure_cvm.errors.CvmEvidenceError` with its name as ``check``:

1. ``evidence-document`` (or ``azure-guest-request``) — the document (request) has its shape;
2. ``hcl-report-layout`` — the document's HCL report: header, sizes, report type and hash type
   (:class:`~securetrain.core.azure_cvm.hcl.HclReport`);
3. ``snp-report-copy`` — the document's ``snpReport`` is the report inside the HCL report, byte for byte;
4. ``quote-layout`` — the document's quote is TPM2B_ATTEST then an RSASSA/SHA-256 TPMT_SIGNATURE
   (:class:`~securetrain.core.azure_cvm.tpm.TpmQuote`).

Then :func:`verify_cvm_evidence`, in order:

5. ``runtime-claims`` — the runtime claims are strict JSON with Microsoft's fields, ``HCLAkPub`` and
   ``HCLEkPub`` RSA keys (:class:`~securetrain.core.azure_cvm.hcl.RuntimeClaims`);
6. ``snp-report`` — the SNP report verifies: layout, VCEK → ASK → ARK to a trusted root, VCEK for this chip
   and TCB, signature (:func:`securetrain.core.snp.verifier.verify_report`; its own error is the cause);
7. ``runtime-claims-binding`` — its REPORT_DATA is SHA-256 of the runtime claims' bytes and 32 zero bytes:
   the chip signed the claims, so ``HCLAkPub`` is the key of this VM's vTPM;
8. ``quote-layout`` — the TPMS_ATTEST is one of type quote (:class:`~securetrain.core.azure_cvm.tpm.QuoteAttestation`);
9. ``quote-signature`` — RSASSA-PKCS1-v1_5/SHA-256 over the TPMS_ATTEST bytes verifies with ``HCLAkPub``;
10. ``quote-nonce`` — the quote's extraData is the evidence's ``nonce``;
11. ``expected-nonce`` — when the caller gives a nonce, it is that nonce (freshness: without one, the
    evidence may be a replay, and only the caller can know);
12. ``pcr-digest`` — the evidence's PCRs are exactly the PCRs the quote selects, and SHA-256 of
    their values in selection order is the quote's pcrDigest;
13. ``ak-certificate`` — ``aikCert`` is one DER certificate (then the NV index's zero padding), for
    ``HCLAkPub``, allowing digital signatures. Its issuer (Azure's "Global Virtual TPM CA - 03") is
    reported, not verified: the intermediate is not in the evidence and Microsoft's vTPM root is not
    pinned here. Trust in the AK comes from step 7, not from this certificate;
14. ``ak-public`` — when the evidence has the AK's public area (a request's ``AikPub``), it is Azure's AK
    template for ``HCLAkPub``, and its qualified name is the quote's ``qualifiedSigner``
    (:class:`~securetrain.core.azure_cvm.ak_public.AkPublic`);
15. ``user-data-key`` — when the evidence names a public key (the document's ``publicKey``, a request's
    runtime key), the runtime claims' ``user-data`` is SHA-256 of its PEM text followed by 32 zero bytes:
    the guest bound that key.

What the verified evidence says — measurement, TCB, debug, VMPL, PCR values, VM configuration — is
exposed, not judged: whether it is acceptable is the caller's appraisal. :func:`verify_cvm_document`,
the command line's entry point, adds one judgement by default: a debuggable guest is refused
(``debug-disabled``), since its memory is open to the host.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from securetrain.core.attestation.claims import (
    ATTESTED_PCR_VALUES,
    attested_pcr_values,
    compliance_status,
    platform_claim,
    sevsnpvm_claims,
)
from securetrain.core.attestation.maa import report_data_for
from securetrain.core.azure_cvm.ak_public import AkPublic
from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.azure_cvm.hcl import RuntimeClaims
from securetrain.core.azure_cvm.tpm import QuoteAttestation
from securetrain.core.snp.certs import CertificateChain, SnpCertificate
from securetrain.core.snp.errors import SnpEvidenceError
from securetrain.core.snp.report import AttestationReport, TcbVersion
from securetrain.core.snp.roots import AMD_ROOTS, TrustedRoot
from securetrain.core.snp.verifier import VerifiedReport, verify_report

logger = logging.getLogger(__name__)

PLATFORM = "azure-cvm"
_DER_SEQUENCE = 0x30
_KEY_USAGE_DIGITAL_SIGNATURE = 0


@dataclass(frozen=True)
class AkCertificate:
    """What the AK certificate says about itself; its chain is not verified (see the module docstring)."""

    issuer_name: str
    subject_name: str
    not_before: datetime
    not_after: datetime

    def to_dict(self) -> dict[str, str]:
        return {
            "issuer": self.issuer_name,
            "subject": self.subject_name,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }


@dataclass(frozen=True)
class VerifiedCvmEvidence:
    """Evidence every check accepted, and what it attests."""

    snp: VerifiedReport
    runtime_claims: RuntimeClaims
    quote: QuoteAttestation
    pcrs: Mapping[int, bytes]
    nonce: bytes
    nonce_expected: bool
    ak_certificate: AkCertificate
    bound_public_key_pem: str | None

    @property
    def report(self) -> AttestationReport:
        """The verified SNP report."""
        return self.snp.report

    @property
    def user_data(self) -> bytes | None:
        """The 64 bytes the guest bound through the runtime claims, if it wrote any."""
        return self.runtime_claims.user_data

    @property
    def simulated(self) -> bool:
        """True when the chain ends in a root other than AMD's: the platform is simulated."""
        return self.snp.simulated

    @property
    def debuggable(self) -> bool:
        """The SNP guest policy lets the host debug the VM (read and write its memory)."""
        return self.report.policy.debug

    @property
    def vmpl(self) -> int:
        """The privilege level the report was made at (0: the paravisor's)."""
        return self.report.vmpl

    @property
    def reported_tcb(self) -> TcbVersion:
        return self.report.reported_tcb

    def claims(self) -> dict[str, Any]:
        """The claims MAA's ``/attest/AzureGuest`` puts in a token for this evidence, JSON-ready.

        Only claims this evidence proves: those MAA derives from the TCG boot log (``secureboot``,
        ``x-ms-azurevm-*debug*``, OS identity) are absent, because the evidence has no boot log; its PCR
        values are given instead. ``x-ms-policy-hash`` and the token's own claims are the issuer's.
        """
        report = self.report
        selected = self.quote.pcr_indexes
        return {
            "x-ms-ver": "1.0",
            "x-ms-attestation-type": "azurevm",
            "x-ms-azurevm-vmid": self.runtime_claims.vm_unique_id,
            "x-ms-azurevm-attested-pcrs": list(selected),
            ATTESTED_PCR_VALUES: attested_pcr_values({index: self.pcrs[index] for index in selected}),
            "x-ms-isolation-tee": {
                "x-ms-attestation-type": "sevsnpvm",
                "x-ms-compliance-status": compliance_status(self.simulated),
                "x-ms-runtime": self.runtime_claims.to_json(),
                **sevsnpvm_claims(report),
            },
            "x-securetrain-platform": platform_claim(self.simulated),
            "nonce": base64.b64encode(self.nonce).decode(),
        }

    def to_dict(self) -> dict[str, Any]:
        """The claims and the facts behind them, JSON-ready (the command line's output)."""
        return {
            "platform": PLATFORM,
            "simulated": self.simulated,
            "claims": self.claims(),
            "snp_root": self.snp.root.to_dict(),
            "ak_certificate": self.ak_certificate.to_dict(),
            "fresh": self.nonce_expected,
            "bound_public_key": self.bound_public_key_pem is not None,
        }


def verify_cvm_evidence(
    evidence: CvmEvidence,
    *,
    nonce: bytes | None,
    trusted_roots: Collection[TrustedRoot],
    now: datetime | None = None,
) -> VerifiedCvmEvidence:
    """Run every check (module docstring) on ``evidence``; ``nonce`` is the one the caller asked the quote for.

    ``nonce=None`` skips only ``expected-nonce``: the result is then not known to be fresh
    (``nonce_expected`` is False). ``now`` (timezone-aware) is when the VCEK chain must be valid.
    """
    runtime_claims = RuntimeClaims.from_bytes(evidence.runtime_claims)
    verified = _verify_snp_report(evidence.snp_report, evidence.platform_certificates, trusted_roots, now)
    if verified.report.report_data != report_data_for(runtime_claims.raw):
        raise CvmEvidenceError(
            Check.RUNTIME_CLAIMS_BINDING,
            "REPORT_DATA is not SHA-256 of the runtime claims followed by 32 zero bytes: the chip did not sign these claims",
        )
    quote = QuoteAttestation.from_bytes(evidence.quote_attested)
    _check_quote_signature(evidence.quote_attested, evidence.quote_signature, runtime_claims.ak_public_key)
    if quote.extra_data != evidence.nonce:
        raise CvmEvidenceError(Check.QUOTE_NONCE, "the quote's extraData is not the document's nonce")
    if nonce is not None and evidence.nonce != nonce:
        raise CvmEvidenceError(Check.EXPECTED_NONCE, "the quote was made for another nonce: stale or replayed evidence")
    _check_pcr_digest(quote, evidence.pcrs)
    ak_certificate = _check_ak_certificate(evidence.ak_certificate, runtime_claims.ak_public_key)
    if evidence.ak_public is not None:
        _check_ak_public(evidence.ak_public, runtime_claims.ak_public_key, quote)
    if evidence.public_key_pem is not None:
        _check_user_data_key(runtime_claims.user_data, evidence.public_key_pem)
    logger.info(
        "Azure CVM evidence verified: VM %s, measurement %s, PCRs %s, root %s%s",
        runtime_claims.vm_unique_id,
        verified.report.measurement.hex()[:16],
        ",".join(map(str, quote.pcr_indexes)),
        verified.root.name,
        "" if nonce is not None else ", nonce not checked against an expected one",
    )
    return VerifiedCvmEvidence(
        snp=verified,
        runtime_claims=runtime_claims,
        quote=quote,
        pcrs=evidence.pcrs,
        nonce=evidence.nonce,
        nonce_expected=nonce is not None,
        ak_certificate=ak_certificate,
        bound_public_key_pem=evidence.public_key_pem,
    )


def verify_cvm_document(
    document: Any,
    *,
    nonce: bytes | None = None,
    trusted_roots: Collection[TrustedRoot] = AMD_ROOTS,
    allow_debug: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Verify a parsed evidence document; the result of :meth:`VerifiedCvmEvidence.to_dict`.

    The command line's entry point: AMD's roots unless others are given, and a debuggable guest refused
    unless ``allow_debug``. Without ``nonce`` the quote is still checked against the document's own
    nonce, but nothing shows the evidence is fresh.
    """
    verified = verify_cvm_evidence(CvmEvidence.from_document(document), nonce=nonce, trusted_roots=trusted_roots, now=now)
    if verified.debuggable and not allow_debug:
        raise CvmEvidenceError(Check.DEBUG_DISABLED, "the SNP guest policy allows debugging: the host can read the VM's memory")
    return verified.to_dict()


def _verify_snp_report(
    report: bytes, platform_certificates: bytes, trusted_roots: Collection[TrustedRoot], now: datetime | None
) -> VerifiedReport:
    try:
        return verify_report(report, CertificateChain.from_pem_bundle(platform_certificates), trusted_roots, now=now)
    except SnpEvidenceError as exc:
        raise CvmEvidenceError(Check.SNP_REPORT, str(exc)) from exc


def _check_quote_signature(attested: bytes, signature: bytes, ak_public_key: rsa.RSAPublicKey) -> None:
    try:
        ak_public_key.verify(signature, attested, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise CvmEvidenceError(
            Check.QUOTE_SIGNATURE, "the quote's signature does not verify with HCLAkPub: altered, or another TPM's"
        ) from None


def _check_pcr_digest(quote: QuoteAttestation, pcrs: Mapping[int, bytes]) -> None:
    selected = quote.pcr_indexes
    if sorted(pcrs) != list(selected):
        raise CvmEvidenceError(
            Check.PCR_DIGEST, f"the document gives PCRs {sorted(pcrs)}, but the quote selects PCRs {list(selected)}"
        )
    if hashlib.sha256(b"".join(pcrs[index] for index in selected)).digest() != quote.pcr_digest:
        raise CvmEvidenceError(Check.PCR_DIGEST, "the PCR values are not the ones the quote's pcrDigest covers")


def _check_ak_certificate(raw: bytes, ak_public_key: rsa.RSAPublicKey) -> AkCertificate:
    def refuse(reason: str) -> CvmEvidenceError:
        return CvmEvidenceError(Check.AK_CERTIFICATE, reason)

    # Reading the NV index gives the whole index: one DER certificate, then zero bytes.
    if len(raw) < 2 or raw[0] != _DER_SEQUENCE:
        raise refuse("aikCert does not start with a DER SEQUENCE")
    if raw[1] < 0x80:
        size, header = raw[1], 2
    elif 0x81 <= raw[1] <= 0x83 and len(raw) >= 2 + (raw[1] & 0x7F):
        header = 2 + (raw[1] & 0x7F)
        size = int.from_bytes(raw[2:header], "big")
    else:
        raise refuse("aikCert does not start with a DER length this reader accepts")
    end = header + size
    if end > len(raw):
        raise refuse(f"aikCert's certificate ({end} bytes) is longer than the {len(raw)} bytes given")
    if any(raw[end:]):
        raise refuse(f"aikCert has non-zero bytes after its certificate (offset {end} onwards)")
    try:
        # The core's strict certificate reader (it also reads AMD's serial-number-0 VCEKs without warnings).
        certificate = SnpCertificate.from_der(raw[:end], "AK")
        key = certificate.public_key()
    except SnpEvidenceError as exc:
        raise refuse(str(exc)) from None
    if not isinstance(key, rsa.RSAPublicKey) or key.public_numbers() != ak_public_key.public_numbers():
        raise refuse(f"the AK certificate (subject '{certificate.subject_name}') is not for HCLAkPub")
    try:
        signs = certificate.key_usage_allows(_KEY_USAGE_DIGITAL_SIGNATURE)
    except SnpEvidenceError as exc:
        raise refuse(str(exc)) from None
    if not signs:
        raise refuse("the AK certificate's keyUsage does not allow digital signatures")
    return AkCertificate(certificate.issuer_name, certificate.subject_name, certificate.not_before, certificate.not_after)


def _check_ak_public(raw: bytes, ak_public_key: rsa.RSAPublicKey, quote: QuoteAttestation) -> None:
    ak_public = AkPublic.from_bytes(raw)
    if ak_public.public_key.public_numbers() != ak_public_key.public_numbers():
        raise CvmEvidenceError(Check.AK_PUBLIC, "AikPub is not HCLAkPub: not the key the chip bound")
    if ak_public.qualified_name != quote.qualified_signer:
        raise CvmEvidenceError(Check.AK_PUBLIC, "the quote's qualifiedSigner is not AikPub's qualified name")


def _check_user_data_key(user_data: bytes | None, public_key_pem: str) -> None:
    expected = hashlib.sha256(public_key_pem.encode()).digest() + bytes(32)
    if user_data != expected:
        raise CvmEvidenceError(
            Check.USER_DATA_KEY, "user-data is not SHA-256 of publicKey followed by 32 zero bytes: the guest did not bind that key"
        )
