"""MAA's AzureGuest request, built from genuine Azure CVM evidence and read back: the same evidence, verifying;
every hostile body refused naming the field, never anything but the project's error."""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securetrain.core.attestation.azure_guest import (
    GuestOs,
    azure_guest_request,
    b64url,
    read_azure_guest_request,
    runtime_key_pem,
    user_data_for,
)
from securetrain.core.azure_cvm.ak_public import AkPublic
from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.azure_cvm.verifier import verify_cvm_evidence
from securetrain.core.snp.roots import AMD_ROOTS

CVM = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "azure-cvm"
DOCUMENT = json.loads(CVM.joinpath("evidence.json").read_text())
EVIDENCE = CvmEvidence.from_document(DOCUMENT)
RUNTIME_KEY = serialization.load_pem_public_key(CVM.joinpath("runtime-key.pub.pem").read_bytes())
GUEST_OS = GuestOs("Linux", "Ubuntu", "22", "04", "6.8.0-1020-azure")
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


def request() -> dict[str, Any]:
    return azure_guest_request(EVIDENCE, RUNTIME_KEY, GUEST_OS, tcg_log=b"boot log")


def info_of(body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(body["AttestationInfo"] + "=" * (-len(body["AttestationInfo"]) % 4)))


def with_info(change: Callable[[dict[str, Any]], None]) -> bytes:
    info = info_of(request())
    change(info)
    return json.dumps({"AttestationInfo": b64url(json.dumps(info).encode())}).encode()


def test_the_runtime_key_binding_is_the_genuine_guests() -> None:
    assert runtime_key_pem(RUNTIME_KEY) == CVM.joinpath("runtime-key.pub.pem").read_text()
    assert user_data_for(RUNTIME_KEY) == verify_cvm_evidence(EVIDENCE, nonce=None, trusted_roots=AMD_ROOTS, now=NOW).user_data


def test_round_trip_gives_the_same_evidence_and_it_verifies() -> None:
    read = read_azure_guest_request(json.dumps(request()).encode())
    assert read.evidence.snp_report == EVIDENCE.snp_report and read.evidence.runtime_claims == EVIDENCE.runtime_claims
    assert read.evidence.quote_attested == EVIDENCE.quote_attested and dict(read.evidence.pcrs) == dict(EVIDENCE.pcrs)
    assert read.nonce_text == DOCUMENT["report"]["snpCvm"]["nonce"] and read.tcg_log == b"boot log"
    verified = verify_cvm_evidence(read.evidence, nonce=EVIDENCE.nonce, trusted_roots=AMD_ROOTS, now=NOW)
    assert verified.bound_public_key_pem == runtime_key_pem(RUNTIME_KEY)
    info = info_of(request())
    assert info["AttestationProtocolVersion"] == "2.0" and info["IsolationInfo"]["Type"] == "SevSnp"
    assert base64.b64decode(info["OSType"]) == b"Linux" and info["TpmInfo"]["PcrSet"] == list(range(24))


def test_the_genuine_aks_public_area_is_the_one_its_quote_names() -> None:
    ak = AkPublic.for_key(verify_cvm_evidence(EVIDENCE, nonce=None, trusted_roots=AMD_ROOTS, now=NOW).runtime_claims.ak_public_key)
    assert AkPublic.from_bytes(ak.to_bytes()) == ak


def refused(body: bytes, check: Check, *, verify: bool = False) -> CvmEvidenceError:
    with pytest.raises(CvmEvidenceError) as error:
        read = read_azure_guest_request(body)
        if verify:
            verify_cvm_evidence(read.evidence, nonce=None, trusted_roots=AMD_ROOTS, now=NOW)
    assert error.value.check is check, error.value
    return error.value


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda i: i.pop("TpmInfo"), "TpmInfo"),
        (lambda i: i.update(AttestationProtocolVersion="1.0"), "AttestationProtocolVersion"),
        (lambda i: i.update(Extra=1), "Extra"),
        (lambda i: i["ClientPayload"].pop("nonce"), "ClientPayload.nonce"),
        (lambda i: i["ClientPayload"].update(nonce=base64.b64encode(bytes(65)).decode()), "ClientPayload.nonce"),
        (lambda i: i["ClientPayload"]["runtime-key"].update(kty="EC"), "runtime-key.kty"),
        (lambda i: i["ClientPayload"]["runtime-key"].update(n="AAEC"), "runtime-key.n"),
        (lambda i: i["ClientPayload"]["runtime-key"].update(n=b64url((1 << 1023 | 1).to_bytes(128, "big"))), "RSA-1024"),
        (lambda i: i["TpmInfo"].update(EncKeyPub="AAAA"), "EncKeyPub"),
        (lambda i: i["TpmInfo"].update(PcrSet=[0]), "PcrSet"),
        (lambda i: i["TpmInfo"]["PCRs"][0].update(Index=24), "PCRs[0].Index"),
        (lambda i: i["TpmInfo"]["PCRs"][0].update(Digest="AA=="), "PCRs[0].Digest"),
        (lambda i: i["TpmInfo"].update(PcrQuote="not base64!"), "PcrQuote"),
        (lambda i: i["IsolationInfo"].update(Type="Tdx"), "IsolationInfo.Type"),
        (lambda i: i["IsolationInfo"]["Evidence"].update(Proof=b64url(b"{}")), "SnpReport"),
        (lambda i: i["IsolationInfo"]["Evidence"].update(RunTimeData="a=="), "RunTimeData"),
    ],
)
def test_hostile_requests_are_refused_naming_the_field(change: Callable[[dict[str, Any]], None], field: str) -> None:
    error = refused(with_info(change), Check.REQUEST)
    assert field in str(error)


def test_not_a_request() -> None:
    assert "AttestationInfo" in str(refused(b'{"AttestationInfo": 1}', Check.REQUEST))
    refused(b'{"AttestationInfo": "e30", "AttestationInfo": "e30"}', Check.REQUEST)
    refused(b"[]", Check.REQUEST)


def test_another_runtime_key_is_not_the_bound_one(rsa_key) -> None:
    body = json.dumps(azure_guest_request(EVIDENCE, rsa_key.public_key(), GUEST_OS)).encode()
    refused(body, Check.USER_DATA_KEY, verify=True)


def test_an_aikpub_of_another_key_or_template_is_refused(rsa_key) -> None:
    other = base64.b64encode(AkPublic.for_key(rsa_key.public_key()).to_bytes()).decode()
    refused(with_info(lambda i: i["TpmInfo"].update(AikPub=other)), Check.AK_PUBLIC, verify=True)
    genuine = bytearray(base64.b64decode(info_of(request())["TpmInfo"]["AikPub"]))
    genuine[9] ^= 0x04  # objectAttributes: stClear
    refused(with_info(lambda i: i["TpmInfo"].update(AikPub=base64.b64encode(bytes(genuine)).decode())), Check.AK_PUBLIC, verify=True)


def test_a_changed_nonce_is_not_the_quotes() -> None:
    nonce = base64.b64encode(bytes(32)).decode()
    refused(with_info(lambda i: i["ClientPayload"].update(nonce=nonce)), Check.QUOTE_NONCE, verify=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_requests_only_ever_raise_the_projects_error(data: st.DataObject) -> None:
    """Random JSON in random places of the request: refused with CvmEvidenceError, or (unchanged meaning) read."""
    info = info_of(request())
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
    path = data.draw(st.sampled_from([
        ("ClientPayload",), ("ClientPayload", "nonce"), ("ClientPayload", "runtime-key"), ("TpmInfo", "PCRs"),
        ("TpmInfo", "AikPub"), ("TpmInfo", "PcrSet"), ("IsolationInfo", "Evidence"), ("IsolationInfo", "Evidence", "Proof"),
        ("OSType",), ("TcgLogs",),
    ]))
    target = info
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(json_values)
    body = json.dumps({"AttestationInfo": b64url(json.dumps(info).encode())}).encode()
    try:
        read = read_azure_guest_request(body)
        verify_cvm_evidence(read.evidence, nonce=None, trusted_roots=AMD_ROOTS, now=NOW)
    except CvmEvidenceError:
        return
    # The OS identity and the boot log are carried, not verified (the quoted PCRs are what counts): any base64 reads.
    if path not in (("OSType",), ("TcgLogs",)):
        pytest.fail(f"a request with {path} replaced was accepted")


def test_the_contract_the_guest_enforces_travels_in_its_client_payload() -> None:
    digest = "cd" * 32
    body = azure_guest_request(EVIDENCE, RUNTIME_KEY, GUEST_OS, contract=digest)
    assert info_of(body)["ClientPayload"]["contract"] == digest
    assert read_azure_guest_request(json.dumps(body).encode()).client_payload["contract"] == digest
    assert "contract" not in read_azure_guest_request(json.dumps(request()).encode()).client_payload
    with pytest.raises(CvmEvidenceError, match="ClientPayload.contract"):
        read_azure_guest_request(with_info(lambda info: info["ClientPayload"].update(contract="not a digest")))
