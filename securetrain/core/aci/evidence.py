"""The two shapes ACI evidence travels in, read into one :class:`AciEvidence`.

**The evidence document** (azure-cleanroom's ``snpCACI`` report; base64 is the standard alphabet)::

    {"report": {"snpCACI": {"attestation": b64(SNP report),
                            "platformCertificates": b64(PEM: VCEK, ASK, ARK),
                            "uvmEndorsements": b64(COSE_Sign1)}},
     "publicKey": "-----BEGIN PUBLIC KEY-----...",     optional: the runtime key the report binds
     "privateKey": "..."}                               optional: never read (the source's test samples carry it)

In the genuine document REPORT_DATA[0:32] is the SHA-256 of ``publicKey`` as written (PEM text): that is the
runtime data the report binds.

**MAA's request** ``POST /attest/SevSnpVm`` with endorsements (base64url, padded or not, canonical)::

    {"report": b64url(JSON {"SnpReport": b64url(report), "VcekCertChain": b64url(PEM),
                            "Endorsements": b64url(JSON {"Uvm": [b64url(COSE_Sign1)]})}),
     "runtimeData": {"data": b64url(JSON), "dataType": "JSON"},
     "initTimeData": {"data": "", "dataType": ""},          optional, and only empty
     "nonce": 13202930541250959283}                          optional: an unsigned 64-bit number or a string

In the genuine request REPORT_DATA[0:32] is the SHA-256 of the runtime data bytes (the decoded ``data``) and
the rest is zero; the nonce is *not* in REPORT_DATA: MAA echoes it into the token, but the hardware did not
sign it, so on its own it proves nothing about freshness. ``initTimeData`` would carry data whose hash is
HOST_DATA; ACI clients send it empty (the CCE policy is Rego, not the JSON MAA takes), and anything else is
refused here rather than silently not bound.

Both shapes are read strictly: a missing or unknown field, a wrong type, non-canonical base64, more than one
UVM endorsement is an :class:`~securetrain.core.aci.errors.AciEvidenceError` with check
``evidence-document`` or ``maa-request``. Nothing is verified here; that is
:func:`securetrain.core.aci.verifier.verify_aci_evidence`'s work.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from securetrain.core.aci.errors import AciEvidenceError
from securetrain.core.json_input import JsonInputError, read_json_object

#: The JSON inside the MAA request's base64url fields (the genuine report object is 29 KiB).
MAX_EMBEDDED_JSON_BYTES = 64 << 10
MAX_NONCE_LENGTH = 256
_U64_MAX = (1 << 64) - 1
_DOCUMENT = "evidence-document"
_REQUEST = "maa-request"


@dataclass(frozen=True)
class AciEvidence:
    """ACI evidence, decoded but not verified.

    ``runtime_data`` is what REPORT_DATA[0:32] must be the SHA-256 of (None when the evidence carries none);
    ``runtime`` is the same data read as a JSON object when it is one (MAA's ``x-ms-runtime``); ``nonce`` is
    the request's nonce, which the hardware does not sign.
    """

    report: bytes
    vcek_chain_pem: bytes
    uvm_endorsement: bytes
    runtime_data: bytes | None = None
    runtime: dict[str, Any] | None = None
    nonce: str | None = None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> AciEvidence:
        """Read the evidence document (shape above)."""
        _only_keys(document, {"report"}, {"publicKey", "privateKey"}, "the document", _DOCUMENT)
        report = _only_keys(document["report"], {"snpCACI"}, set(), "report", _DOCUMENT)
        caci = _only_keys(
            report["snpCACI"], {"attestation", "platformCertificates", "uvmEndorsements"}, set(), "report.snpCACI", _DOCUMENT
        )
        public_key = document.get("publicKey")
        if public_key is not None and not isinstance(public_key, str):
            _refuse(_DOCUMENT, "publicKey must be the runtime key's PEM text")
        return cls(
            report=_base64(caci["attestation"], "report.snpCACI.attestation"),
            vcek_chain_pem=_base64(caci["platformCertificates"], "report.snpCACI.platformCertificates"),
            uvm_endorsement=_base64(caci["uvmEndorsements"], "report.snpCACI.uvmEndorsements"),
            runtime_data=None if public_key is None else public_key.encode(),
        )

    @classmethod
    def from_maa_request(cls, body: Mapping[str, Any]) -> AciEvidence:
        """Read MAA's ``/attest/SevSnpVm`` request body (shape above), already parsed from JSON."""
        _only_keys(body, {"report", "runtimeData"}, {"initTimeData", "nonce"}, "the request", _REQUEST)
        evidence = _only_keys(
            _embedded_json(body["report"], "report"),
            {"SnpReport", "VcekCertChain", "Endorsements"},
            set(),
            "report",
            _REQUEST,
        )
        endorsements = _only_keys(
            _embedded_json(evidence["Endorsements"], "report.Endorsements"), {"Uvm"}, set(), "report.Endorsements", _REQUEST
        )
        uvm = endorsements["Uvm"]
        if not isinstance(uvm, list) or len(uvm) != 1:
            _refuse(_REQUEST, "report.Endorsements.Uvm must hold exactly one UVM endorsement")
        runtime_data = _only_keys(body["runtimeData"], {"data", "dataType"}, set(), "runtimeData", _REQUEST)
        if runtime_data["dataType"] != "JSON":
            _refuse(_REQUEST, f"runtimeData.dataType is {runtime_data['dataType']!r}; only 'JSON' is read")
        data = _base64url(runtime_data["data"], "runtimeData.data")
        init_time_data = body.get("initTimeData")
        if init_time_data is not None and init_time_data != {"data": "", "dataType": ""}:
            _refuse(_REQUEST, "initTimeData must be absent or empty: data it carries would not be bound to HOST_DATA here")
        return cls(
            report=_base64url(evidence["SnpReport"], "report.SnpReport"),
            vcek_chain_pem=_base64url(evidence["VcekCertChain"], "report.VcekCertChain"),
            uvm_endorsement=_base64url(uvm[0], "report.Endorsements.Uvm[0]"),
            runtime_data=data,
            runtime=_json_object(data, "runtimeData.data"),
            nonce=_nonce(body.get("nonce")),
        )


def load_aci_evidence(document: Mapping[str, Any]) -> AciEvidence:
    """Either shape, told apart by ``report``: an object in the evidence document, a string in MAA's request."""
    if not isinstance(document, Mapping):
        _refuse(_DOCUMENT, "ACI evidence must be a JSON object")
    if isinstance(document.get("report"), str):
        return AciEvidence.from_maa_request(document)
    return AciEvidence.from_document(document)


def _only_keys(value: Any, required: set[str], optional: set[str], where: str, check: str) -> Mapping[str, Any]:
    """``value`` as an object holding every ``required`` key, and no key outside ``required | optional``."""
    if not isinstance(value, Mapping):
        _refuse(check, f"{where} must be a JSON object")
    missing = sorted(required - set(value))
    if missing:
        _refuse(check, f"{where} lacks {missing}")
    unknown = sorted(str(key) for key in set(value) - required - optional)
    if unknown:
        _refuse(check, f"{where} holds fields this verifier does not read: {unknown}")
    return value


def _base64(text: Any, field: str) -> bytes:
    if not isinstance(text, str):
        _refuse(_DOCUMENT, f"{field} must be a base64 string")
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        _refuse(_DOCUMENT, f"{field} is not base64")
    if base64.b64encode(value).decode() != text:
        _refuse(_DOCUMENT, f"{field} is not canonical base64")
    return value


def _base64url(text: Any, field: str) -> bytes:
    if not isinstance(text, str):
        _refuse(_REQUEST, f"{field} must be a base64url string")
    try:
        value = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        _refuse(_REQUEST, f"{field} is not base64url")
    # Padded (as Go's encoder writes it) or not, but only the canonical encoding: one string, one value.
    canonical = base64.urlsafe_b64encode(value).decode()
    if text not in (canonical, canonical.rstrip("=")):
        _refuse(_REQUEST, f"{field} is not canonical base64url")
    return value


def _embedded_json(text: Any, field: str) -> dict[str, Any]:
    return _json_object(_base64url(text, field), field)


def _json_object(data: bytes, field: str) -> dict[str, Any]:
    try:
        return read_json_object(data, max_bytes=MAX_EMBEDDED_JSON_BYTES, what=field)
    except JsonInputError as exc:
        _refuse(_REQUEST, str(exc))


def _nonce(value: Any) -> str | None:
    # Go clients (Microsoft's sidecar, azure-cleanroom) send a uint64; MAA's reference says string.
    if value is None:
        return None
    if type(value) is int and 0 <= value <= _U64_MAX:
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_NONCE_LENGTH:
        return value
    _refuse(_REQUEST, f"nonce must be an unsigned 64-bit number or a string of 1 to {MAX_NONCE_LENGTH} characters")


def _refuse(check: str, message: str) -> NoReturn:
    raise AciEvidenceError(check, message)
