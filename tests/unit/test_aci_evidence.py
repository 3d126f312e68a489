"""The two shapes of ACI evidence: both genuine ones read to the same report, chain and endorsement; anything
else is refused by name."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.aci.errors import AciEvidenceError
from securetrain.core.aci.evidence import AciEvidence, load_aci_evidence
from tests.aci_evidence import DOCUMENT, ENDORSEMENT, MAA_REQUEST, REPORT, b64url


def inner(request: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(request["report"] + "=="))


def with_inner(request: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(request)
    changed["report"] = b64url(json.dumps(report).encode())
    return changed


def refused(document: Any, check: str, reason: str) -> None:
    with pytest.raises(AciEvidenceError, match=reason) as caught:
        load_aci_evidence(document)
    assert caught.value.check == check


def test_the_document_reads() -> None:
    evidence = load_aci_evidence(DOCUMENT)
    assert evidence.report == REPORT and len(evidence.report) == 1184
    assert evidence.vcek_chain_pem.count(b"BEGIN CERTIFICATE") == 3
    assert evidence.uvm_endorsement == ENDORSEMENT
    assert evidence.runtime_data == DOCUMENT["publicKey"].encode()
    assert evidence.runtime is None and evidence.nonce is None


def test_the_maa_request_reads_to_the_same_chain_and_endorsement() -> None:
    evidence = load_aci_evidence(MAA_REQUEST)
    document = AciEvidence.from_document(DOCUMENT)
    assert evidence.vcek_chain_pem == document.vcek_chain_pem
    assert evidence.uvm_endorsement == document.uvm_endorsement
    # Another report of the same UVM: only REPORT_DATA and what depends on it differ.
    assert evidence.report[0x90:0xE0] == document.report[0x90:0xE0]
    assert evidence.report[0x50:0x90] != document.report[0x50:0x90]
    assert set(evidence.runtime) == {"keys"} and evidence.runtime["keys"][0]["kid"] == "96478d5f"
    assert evidence.nonce == "13202930541250959283"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.pop("report"), r"lacks \['report'\]"),
        (lambda d: d.update(extra=1), r"does not read: \['extra'\]"),
        (lambda d: d["report"].update(snpCvm={}), r"does not read: \['snpCvm'\]"),
        (lambda d: d["report"]["snpCACI"].pop("uvmEndorsements"), "lacks"),
        (lambda d: d["report"]["snpCACI"].update(attestation=7), "must be a base64 string"),
        (lambda d: d["report"]["snpCACI"].update(attestation="AA-A"), "not base64"),
        (lambda d: d["report"]["snpCACI"].update(attestation="AB=="), "not canonical"),
        (lambda d: d.update(publicKey=["pem"]), "PEM text"),
        (lambda d: d.update(report="x"), r"lacks \['runtimeData'\]"),  # a string report is MAA's shape
    ],
)
def test_malformed_documents_are_refused(change, reason: str) -> None:
    document = copy.deepcopy(DOCUMENT)
    change(document)
    check = "maa-request" if isinstance(document.get("report"), str) else "evidence-document"
    refused(document, check, reason)


def test_the_document_without_its_keys_reads() -> None:
    document = {"report": DOCUMENT["report"]}
    assert load_aci_evidence(document).runtime_data is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.update(draftPolicyForAttestation="x"), "does not read"),
        (lambda r: r.pop("runtimeData"), "lacks"),
        (lambda r: r.update(nonce=-1), "unsigned 64-bit"),
        (lambda r: r.update(nonce=1 << 64), "unsigned 64-bit"),
        (lambda r: r.update(nonce=True), "unsigned 64-bit"),
        (lambda r: r.update(nonce=""), "unsigned 64-bit"),
        (lambda r: r.update(initTimeData={"data": "e30", "dataType": "JSON"}), "absent or empty"),
        (lambda r: r["runtimeData"].update(dataType="Binary"), "only 'JSON'"),
        (lambda r: r["runtimeData"].update(data=b64url(b"[1]")), "not a JSON object"),
        (lambda r: r["runtimeData"].update(data=b64url(b'{"a": 1, "a": 2}')), "twice"),
        (lambda r: r["runtimeData"].update(data=r["runtimeData"]["data"] + "!"), "not base64url"),
        (lambda r: r["runtimeData"].update(data=base64.b64encode(b"\xfb\xff\xfe").decode()), "not canonical"),
    ],
)
def test_malformed_requests_are_refused(change, reason: str) -> None:
    request = copy.deepcopy(MAA_REQUEST)
    change(request)
    refused(request, "maa-request", reason)


def test_nonce_may_be_a_string_and_init_time_data_absent() -> None:
    request = copy.deepcopy(MAA_REQUEST)
    request["nonce"] = "job-42"
    del request["initTimeData"]
    assert load_aci_evidence(request).nonce == "job-42"
    del request["nonce"]
    assert load_aci_evidence(request).nonce is None


def test_unpadded_base64url_reads_too() -> None:
    request = copy.deepcopy(MAA_REQUEST)
    request["runtimeData"]["data"] = request["runtimeData"]["data"].rstrip("=")
    assert load_aci_evidence(request).runtime_data == load_aci_evidence(MAA_REQUEST).runtime_data


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.pop("Endorsements"), "lacks"),
        (lambda r: r.update(Endorsements=b64url(b'{"Uvm": []}')), "exactly one"),
        (lambda r: r.update(Endorsements=b64url(json.dumps({"Uvm": [b64url(ENDORSEMENT)] * 2}).encode())), "exactly one"),
        (lambda r: r.update(Endorsements=b64url(b'{"Uvm": ["AA"], "Tcb": 1}')), "does not read"),
        (lambda r: r.update(SnpReport=base64.b64encode(REPORT).decode()), "canonical"),
    ],
)
def test_malformed_report_objects_are_refused(change, reason: str) -> None:
    report = inner(MAA_REQUEST)
    change(report)
    refused(with_inner(MAA_REQUEST, report), "maa-request", reason)


def test_a_document_that_is_not_an_object_is_refused() -> None:
    refused(["report"], "evidence-document", "JSON object")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["report", "runtimeData", "initTimeData", "nonce", "publicKey", "x"]), JSON))
def test_arbitrary_json_raises_only_the_project_error(document: dict[str, Any]) -> None:
    try:
        load_aci_evidence(document)
    except AciEvidenceError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["SnpReport", "VcekCertChain", "Endorsements"]), JSON)
def test_arbitrary_report_fields_raise_only_the_project_error(field: str, value: Any) -> None:
    report = inner(MAA_REQUEST)
    report[field] = value
    try:
        load_aci_evidence(with_inner(MAA_REQUEST, report))
    except AciEvidenceError:
        pass
