"""The evidence document an Azure confidential VM's attestation agent produces, read strictly.

The shape is the one Azure's open-source clean room (``Azure/azure-cleanroom``: its
``cvm-attestation-agent`` answers ``POST /snp/attest`` with ``report.snpCvm``) captures on a real CVM::

    {"report": {"snpCvm": {
        "evidence": {
          "tpmQuote":  base64(TPM2B_ATTEST ‖ TPMT_SIGNATURE),
          "hclReport": base64(NV index 0x01400001: the HCL report, zero-padded to the index size),
          "snpReport": base64(the 1184-byte SNP report inside the HCL report),
          "aikCert":   base64(NV index 0x01C101D0: the AK certificate, DER, zero-padded),
          "pcrs":      {"0": base64(SHA-256 PCR 0), ..., "23": ...},
          "runtimeClaims": {...},                  # optional, unsigned: see below
          "eventLog": base64(TCG2 event log)},     # optional, this product's: see below
        "nonce": base64(the quote's extraData),
        "platformCertificates": "VCEK, ASK, ARK as PEM",
        "imageReference": {"publisher": ..., ...}}},  # optional, unsigned
     "publicKey": "PEM",                             # optional: the key whose hash the guest wrote as user-data
     "privateKey": "PEM"}                            # optional: never read (the capture tool stores its test key pair)

Every field must have its type; a field not listed here, a missing one, non-canonical base64 or a PCR
index outside 0-23 is refused (check ``evidence-document``). Two fields are accepted but not trusted,
because nothing signs them: ``runtimeClaims`` is the agent's re-serialisation of the HCL report's claims
(its own struct adds ``root-cert-thumbprint`` and ``tpm-persisted``, which the paravisor did not write),
so the verifier reads the claims only from the HCL report's bound bytes, as the clean room's own
verifier does; ``imageReference`` is what the VM's metadata service says the image is. The TEE's own
provider (:mod:`securetrain.tee.evidence.azure_cvm`) adds ``eventLog``, the TCG boot log Azure's guest
library sends MAA as ``TcgLogs``: it is carried, not trusted; the PCR values it explains are the quote's.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError

from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError
from securetrain.core.azure_cvm.hcl import HclReport
from securetrain.core.azure_cvm.tpm import MAX_EXTRA_DATA, PCR_COUNT, SHA256_SIZE, TpmQuote
from securetrain.core.contracts.base import Contract, JsonObject, Omittable, canonical_base64, first_error, matching, refusal
from securetrain.core.json_input import JsonInputError, read_json_object

#: The captured document is about 25 KiB; a document this large is not one an agent produced.
MAX_DOCUMENT_BYTES = 1 << 20


def _base64(value: Any) -> bytes:
    """Canonical standard base64 (:func:`~securetrain.core.contracts.base.canonical_base64`: one string per value,
    so two documents with the same evidence are the same document), never empty."""
    decoded = canonical_base64(value)
    if not decoded:
        raise refusal("is empty")
    return decoded


Base64 = Annotated[bytes, BeforeValidator(_base64)]
_PcrIndex = matching(r"0|[1-9][0-9]?", "a PCR index, 0 to 23, in decimal")


# The models spell fields as the document does (camelCase), so that a refusal names the field as written.
class _ImageReference(Contract):
    id: str
    offer: str
    publisher: str
    sku: str
    version: str
    communityGalleryImageId: str
    sharedGalleryImageId: str
    exactVersion: str


class _Evidence(Contract):
    tpmQuote: Base64
    hclReport: Base64
    snpReport: Base64
    aikCert: Base64
    pcrs: dict[_PcrIndex, Base64]
    runtimeClaims: Omittable[JsonObject]
    eventLog: Omittable[Base64]


class _SnpCvm(Contract):
    evidence: _Evidence
    nonce: Base64
    platformCertificates: str
    imageReference: Omittable[_ImageReference]


class _Report(Contract):
    snpCvm: _SnpCvm


class _Document(Contract):
    report: _Report
    publicKey: Omittable[Annotated[str, Field(min_length=1)]]
    privateKey: Omittable[str]


@dataclass(frozen=True)
class CvmEvidence:
    """The evidence of one Azure CVM as what is signed or bound, not yet verified.

    Whatever shape it arrived in — the evidence document (:meth:`from_document`, which reads the HCL report
    and the quote's framing) or MAA's ``/attest/AzureGuest`` request
    (:mod:`securetrain.core.attestation.azure_guest`, which carries the parts separately) — the verifier sees
    the same parts: the SNP report and the runtime claims it binds, the quote's TPMS_ATTEST bytes and its
    RSASSA signature, the PCR values, the AK's certificate and (from a request) public area, the nonce the
    quote was made for, the VCEK chain, and the public key the guest says it bound through ``user-data``.
    """

    snp_report: bytes
    runtime_claims: bytes
    quote_attested: bytes
    quote_signature: bytes
    pcrs: Mapping[int, bytes]
    ak_certificate: bytes
    nonce: bytes
    platform_certificates: bytes
    ak_public: bytes | None = None
    public_key_pem: str | None = None

    @classmethod
    def from_document(cls, document: Any) -> CvmEvidence:
        """Decode a parsed evidence document; refuse anything but its shape (check ``evidence-document``), an
        HCL report that is not one (``hcl-report-layout``), a ``snpReport`` that is not the HCL report's
        (``snp-report-copy``), a quote that is not TPM2B_ATTEST and an RSASSA/SHA-256 TPMT_SIGNATURE
        (``quote-layout``)."""
        try:
            parsed = _Document.model_validate(document)
        except ValidationError as exc:
            path, reason = first_error(exc)
            raise CvmEvidenceError(Check.DOCUMENT, f"{path or 'the document'}: {reason}") from None
        snp_cvm = parsed.report.snpCvm
        evidence = snp_cvm.evidence
        pcrs = {int(index): value for index, value in evidence.pcrs.items()}
        for index, value in sorted(pcrs.items()):
            if index >= PCR_COUNT:
                raise CvmEvidenceError(Check.DOCUMENT, f"report.snpCvm.evidence.pcrs: PCR {index} is beyond PCR {PCR_COUNT - 1}")
            if len(value) != SHA256_SIZE:
                raise CvmEvidenceError(
                    Check.DOCUMENT, f"report.snpCvm.evidence.pcrs.{index}: {len(value)} bytes is not a SHA-256 PCR value"
                )
        if len(snp_cvm.nonce) > MAX_EXTRA_DATA:
            raise CvmEvidenceError(Check.DOCUMENT, f"report.snpCvm.nonce: {len(snp_cvm.nonce)} bytes, more than {MAX_EXTRA_DATA}")
        hcl = HclReport.from_bytes(evidence.hclReport)
        if evidence.snpReport != hcl.snp_report:
            raise CvmEvidenceError(Check.SNP_REPORT_COPY, "snpReport is not the SNP report inside the HCL report")
        quote = TpmQuote.from_bytes(evidence.tpmQuote)
        return cls(
            snp_report=hcl.snp_report,
            runtime_claims=hcl.runtime_claims,
            quote_attested=quote.attested,
            quote_signature=quote.signature.signature,
            pcrs=MappingProxyType(dict(sorted(pcrs.items()))),
            ak_certificate=evidence.aikCert,
            nonce=snp_cvm.nonce,
            platform_certificates=snp_cvm.platformCertificates.encode(),
            public_key_pem=parsed.publicKey,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> CvmEvidence:
        """Read an evidence document from its JSON bytes (strict JSON: no duplicate keys, no NaN, bounded size)."""
        try:
            document = read_json_object(raw, max_bytes=MAX_DOCUMENT_BYTES, what="the evidence document")
        except JsonInputError as exc:
            raise CvmEvidenceError(Check.DOCUMENT, str(exc)) from None
        return cls.from_document(document)

    @property
    def nonce_text(self) -> str:
        """The nonce as the document writes it (base64)."""
        return base64.b64encode(self.nonce).decode()
