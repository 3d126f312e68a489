"""Submitting evidence to an attestation service with Azure Attestation's (MAA) REST shape.

``azure-security-attestation`` has no call for SEV-SNP VMs or Azure CVMs, so this speaks MAA's bodies: an
Azure CVM's ``/attest/AzureGuest`` request is :mod:`securetrain.core.attestation.azure_guest`'s; a bare
SEV-SNP VM's is this:

    POST {endpoint}/attest/SevSnpVm?api-version=2022-08-01
    {"report": b64url(JSON{"SnpReport": b64url(report), "VcekCertChain": b64url(PEM chain)}),
     "runtimeData": {"data": b64url(runtime data JSON), "dataType": "JSON"},
     "nonce": "..."}
    -> 200 {"token": JWT}  |  400 {"error": {"code": ..., "message": ...}}

On Azure Container Instances the report object also carries Microsoft's endorsement of the utility VM:
``"Endorsements": b64url(JSON{"Uvm": [b64url(COSE_Sign1)]})`` (:mod:`securetrain.core.aci.evidence`).

The runtime data is the TEE's statement (its ephemeral public key, the job nonce); its SHA-256 is the
first half of the report's REPORT_DATA, which is what binds the statement to the hardware.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import requests
import rfc8785

from securetrain.core.attestation.tokens import AuthorityUnreachable
from securetrain.core.errors import SecurityViolation
from securetrain.core.http import HttpsSession

log = logging.getLogger(__name__)

API_VERSION = "2022-08-01"
REPORT_DATA_SIZE = 64


class AttestationRefused(SecurityViolation):
    """The attestation service appraised the evidence and refused it; the message is its reason."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def runtime_data_bytes(runtime_data: Mapping[str, Any]) -> bytes:
    """The runtime data as the TEE sends it: canonical JSON (RFC 8785), so its hash is well defined."""
    return rfc8785.dumps(dict(runtime_data))


def report_data_for(runtime_data: bytes) -> bytes:
    """REPORT_DATA binding ``runtime_data``: its SHA-256 followed by 32 zero bytes, as MAA expects."""
    return hashlib.sha256(runtime_data).digest() + bytes(REPORT_DATA_SIZE - 32)


def sev_snp_request(
    report: bytes, vcek_chain_pem: bytes, runtime_data: bytes, nonce: str | None, *, uvm_endorsement: bytes | None = None
) -> dict[str, Any]:
    fields = {"SnpReport": b64url(report), "VcekCertChain": b64url(vcek_chain_pem)}
    if uvm_endorsement is not None:
        fields["Endorsements"] = b64url(rfc8785.dumps({"Uvm": [b64url(uvm_endorsement)]}))
    evidence = rfc8785.dumps(fields)
    body: dict[str, Any] = {
        "report": b64url(evidence),
        "runtimeData": {"data": b64url(runtime_data), "dataType": "JSON"},
    }
    if nonce is not None:
        body["nonce"] = nonce
    return body


class AttestationServiceClient:
    """A client of one attestation endpoint (MAA, or the local stand-in) over verified TLS.

    Connection failures and 502/503/504 (a service restarting) are retried within the project's bounds
    (:mod:`securetrain.core.http`); a request whose answer was lost on the way back is not re-sent, so a
    retry never spends a nonce twice.
    """

    def __init__(self, endpoint: str, *, verify: str | bool = True, timeout: float = 30.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._timeout = timeout
        self._session = HttpsSession(verify, resend=False)

    def attest_sev_snp_vm(
        self,
        report: bytes,
        vcek_chain_pem: bytes,
        runtime_data: bytes,
        nonce: str | None = None,
        *,
        uvm_endorsement: bytes | None = None,
    ) -> str:
        """Submit evidence (with the UVM endorsement on ACI); return the signed token (validate it with
        :mod:`securetrain.core.attestation.tokens`)."""
        request = sev_snp_request(report, vcek_chain_pem, runtime_data, nonce, uvm_endorsement=uvm_endorsement)
        return self._attest("SevSnpVm", request)

    def attest_azure_guest(self, request: Mapping[str, Any]) -> str:
        """Submit an Azure CVM's ``/attest/AzureGuest`` request
        (:func:`securetrain.core.attestation.azure_guest.azure_guest_request`); return the signed token."""
        return self._attest("AzureGuest", request)

    def _attest(self, attestation_type: str, body: Mapping[str, Any]) -> str:
        url = f"{self.endpoint}/attest/{attestation_type}"
        try:
            response = self._session.post(url, params={"api-version": API_VERSION}, json=dict(body), timeout=self._timeout)
        except requests.exceptions.SSLError as exc:
            raise SecurityViolation(f"TLS verification of {url} failed: {exc}") from None
        except requests.RequestException as exc:
            raise AuthorityUnreachable(f"cannot reach the attestation service at {url}: {exc}") from None
        if response.status_code == 200:
            token = response.json().get("token")
            if not isinstance(token, str):
                raise AuthorityUnreachable(f"{url} answered 200 without a token")
            log.info("attestation service %s issued a token", self.endpoint)
            return token
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = str(response.status_code), response.text[:500]
        if 400 <= response.status_code < 500:
            raise AttestationRefused(f"attestation refused ({code}): {message}", code=code)
        raise AuthorityUnreachable(f"attestation service {url} failed with {response.status_code}: {message}")
