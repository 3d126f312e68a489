"""The request body of MAA's ``POST /attest/SevSnpVm`` (api-version 2022-08-01), as the stand-in reads it.

``AttestSevSnpVmRequest``: ``report`` (base64url of a JSON object holding the SNP report and the VCEK
certificate chain), ``runtimeData`` (``{"data": base64url, "dataType": "JSON" | "Binary"}``), an optional
``nonce`` and ``draftPolicyForAttestation``. Field names are the wire names; types are strict. A body of
the wrong shape is ``400 InvalidParameter`` naming the field. Properties the stand-in does not use
(``initTimeData``) are ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from securetrain.localstack.standins.request_body import RequestBody

MAX_NONCE_LENGTH = 256




class RuntimeData(RequestBody):
    """Data the TEE binds into its report (REPORT_DATA holds its SHA-256), and how to read it."""

    data: str
    data_type: Literal["JSON", "Binary"] = Field(alias="dataType")


class AttestSevSnpVmRequest(RequestBody):
    report: str
    runtime_data: RuntimeData = Field(alias="runtimeData")
    nonce: Annotated[str, Field(min_length=1, max_length=MAX_NONCE_LENGTH)] | None = None
    #: A policy to evaluate instead of the service's (MAA then issues a token nobody can validate).
    draft_policy_for_attestation: str | None = Field(default=None, alias="draftPolicyForAttestation")


class SnpReportEvidence(RequestBody):
    """The JSON inside ``report``: the SNP report and the VCEK → ASK → ARK chain, each base64url."""

    snp_report: str = Field(alias="SnpReport")
    vcek_cert_chain: str = Field(alias="VcekCertChain")
