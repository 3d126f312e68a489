"""The Azure CVM provider's own checks, without a vTPM: reading the HCL report, the request, the IMDS transport."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.errors import ConfigurationError
from securetrain.core.http import HttpsSession
from securetrain.tee.evidence import EvidenceError
from securetrain.tee.evidence.azure_cvm import (
    AzureCvmEvidenceInvalid,
    AzureCvmProvider,
    _imds_session,
    read_hcl_report,
)
from securetrain.tee.settings import AZURE_EVENT_LOG, AZURE_IMDS_ENDPOINT

GENUINE = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "azure-cvm" / "evidence.json"


@pytest.fixture(scope="module")
def genuine_hcl() -> tuple[bytes, dict]:
    evidence = json.loads(GENUINE.read_text())["report"]["snpCvm"]["evidence"]
    return base64.b64decode(evidence["hclReport"]), evidence


def test_the_genuine_hcl_report_reads_as_its_snp_report_and_signed_claims(genuine_hcl) -> None:
    blob, evidence = genuine_hcl
    report, claims = read_hcl_report(blob)
    assert report.snp_report == base64.b64decode(evidence["snpReport"])
    assert hashlib.sha256(claims.to_bytes()).digest() == report.snp_report[0x50:0x70]
    assert claims.user_data == bytes.fromhex(evidence["runtimeClaims"]["user-data"])


@pytest.mark.parametrize(
    "change",
    [
        lambda blob: blob[:1300],  # cut inside the claims
        lambda blob: b"XCLA" + blob[4:],  # not an HCL report
        lambda blob: blob[:1216] + (2000).to_bytes(4, "little") + blob[1220:],  # data size disagrees
        lambda blob: blob[:1228] + (2).to_bytes(4, "little") + blob[1232:],  # claims bound with SHA-384
    ],
)
def test_a_malformed_hcl_report_is_refused(genuine_hcl, change) -> None:
    with pytest.raises(AzureCvmEvidenceInvalid) as refused:
        read_hcl_report(change(genuine_hcl[0]))
    assert refused.value.step == "read-hcl-report"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=2600), st.binary(min_size=1, max_size=8))
def test_hostile_nv_content_raises_only_the_projects_error(noise, position, patch) -> None:
    genuine = json.loads(GENUINE.read_text())["report"]["snpCvm"]["evidence"]["hclReport"]
    blob = base64.b64decode(genuine)
    for candidate in (noise, blob[:position] + patch + blob[position + len(patch) :], b"HCLA" + noise):
        try:
            read_hcl_report(candidate)
        except EvidenceError:
            pass


@pytest.mark.parametrize(("user_data", "nonce"), [(bytes(63), bytes(32)), (bytes(64), bytes(15)), (bytes(64), bytes(33))])
def test_a_request_of_the_wrong_size_is_refused_before_the_vtpm_is_asked(user_data, nonce) -> None:
    provider = AzureCvmProvider("swtpm:host=127.0.0.1,port=1", "https://127.0.0.1:1", event_log=AZURE_EVENT_LOG)
    with pytest.raises(AzureCvmEvidenceInvalid) as refused:
        provider.evidence(user_data, nonce)
    assert refused.value.step == "check-request"


def test_imds_is_reached_over_https_or_at_azures_link_local_address_alone() -> None:
    assert isinstance(_imds_session("https://127.0.0.1:8443", None), HttpsSession)
    azure = _imds_session(AZURE_IMDS_ENDPOINT, None)
    assert type(azure) is requests.Session and azure.trust_env is False
    for endpoint in ("http://127.0.0.1:8080", "http://169.254.169.254:8080", "http://metadata.example", "ftp://169.254.169.254"):
        with pytest.raises(ConfigurationError):
            _imds_session(endpoint, None)
