"""The checks of Azure confidential VM evidence, by name, and the error that names the one that failed.

Every refusal of :mod:`securetrain.core.azure_cvm` — a parser meeting bytes it does not accept, or a
verifier check that does not hold — is a :class:`CvmEvidenceError` whose ``check`` is one of
:class:`Check`, and whose message starts with it. It is a
:class:`~securetrain.core.errors.SecurityViolation`: evidence that cannot be verified is refused,
never retried.
"""

from __future__ import annotations

from enum import StrEnum

from securetrain.core.errors import SecurityViolation


class Check(StrEnum):
    """The checks, in the order they run: reading the evidence (a document or a request), then
    :func:`~securetrain.core.azure_cvm.verifier.verify_cvm_evidence`."""

    DOCUMENT = "evidence-document"
    #: MAA's ``/attest/AzureGuest`` request (:mod:`securetrain.core.attestation.azure_guest`) instead of a document.
    REQUEST = "azure-guest-request"
    HCL_REPORT_LAYOUT = "hcl-report-layout"
    SNP_REPORT_COPY = "snp-report-copy"
    RUNTIME_CLAIMS = "runtime-claims"
    SNP_REPORT = "snp-report"
    RUNTIME_CLAIMS_BINDING = "runtime-claims-binding"
    QUOTE_LAYOUT = "quote-layout"
    QUOTE_SIGNATURE = "quote-signature"
    QUOTE_NONCE = "quote-nonce"
    EXPECTED_NONCE = "expected-nonce"
    PCR_DIGEST = "pcr-digest"
    AK_CERTIFICATE = "ak-certificate"
    AK_PUBLIC = "ak-public"
    USER_DATA_KEY = "user-data-key"
    #: Not run by verify_cvm_evidence: the judgement verify_cvm_document adds by default.
    DEBUG_DISABLED = "debug-disabled"


class CvmEvidenceError(SecurityViolation):
    """Azure CVM evidence was refused; ``check`` names the check that failed, ``reason`` says how."""

    def __init__(self, check: Check, reason: str) -> None:
        super().__init__(f"Azure CVM evidence refused by check {check.value}: {reason}")
        self.check = check
        self.reason = reason
