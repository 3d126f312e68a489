"""The ACI provider against a security context directory made of the genuine ACI files and a configfs-tsm tree.

The security context holds what ACI gives the container group (the genuine VCEK chain in THIM's JSON, the
genuine UVM endorsement, the genuine CCE policy); the report instance serves the genuine report of MAA's
request, so the provider's output must pass the ACI verifier as MAA would receive it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from securetrain.core.aci.evidence import load_aci_evidence
from securetrain.core.aci.verifier import verify_aci_evidence
from securetrain.core.attestation.maa import report_data_for, sev_snp_request
from securetrain.core.snp.roots import AMD_ROOTS
from securetrain.tee.evidence import ConfigfsTsmProvider, EvidenceError, EvidenceUnavailable
from securetrain.tee.evidence.azure_aci import HOST_AMD_CERT, REFERENCE_INFO, SECURITY_POLICY, AzureAciProvider
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from tests.aci_evidence import CCE_POLICY, DOCUMENT, ENDORSEMENT, MAA_REQUEST, NOW
from tests.unit.test_attestation_service import decode, service
from tests.unit.test_evidence_configfs_tsm import make_instance


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


REQUEST_EVIDENCE = json.loads(b64url_decode(MAA_REQUEST["report"]))
REPORT = b64url_decode(REQUEST_EVIDENCE["SnpReport"])
RUNTIME_DATA = b64url_decode(MAA_REQUEST["runtimeData"]["data"])
CHAIN_PEM = base64.b64decode(DOCUMENT["report"]["snpCACI"]["platformCertificates"])
POLICY_BASE64 = next(line.split(":", 1)[1].strip() for line in CCE_POLICY.decode().splitlines()
                     if line.startswith("ccepolicy:"))  # fmt: skip


def thim_json(chain_pem: bytes = CHAIN_PEM) -> bytes:
    """The host's certificates as THIM gives them: the VCEK apart from the ASK and ARK."""
    # Split as text: the genuine VCEK has serial number 0, which pyca/cryptography warns about when parsing it.
    end = "-----END CERTIFICATE-----"
    vcek, ask, ark = (block.strip() + f"\n{end}\n" for block in chain_pem.decode().split(end)[:3])
    return json.dumps({"vcekCert": vcek, "tcbm": "DB18000000000004", "certificateChain": ask + ark,
                       "cacheControl": "86400"}).encode()  # fmt: skip


@pytest.fixture
def context(tmp_path: Path) -> Path:
    directory = tmp_path / "security-context-genuine"
    directory.mkdir()
    (directory / HOST_AMD_CERT).write_bytes(base64.b64encode(thim_json()))
    (directory / REFERENCE_INFO).write_bytes(base64.b64encode(ENDORSEMENT))
    (directory / SECURITY_POLICY).write_text(POLICY_BASE64)
    return directory


@pytest.fixture
def tsm(tmp_path: Path) -> ConfigfsTsmProvider:
    make_instance(tmp_path / "tsm", outblob=REPORT, auxblob=b"", generations=[7, 8])
    return ConfigfsTsmProvider(tmp_path / "tsm")


def test_genuine_context_and_report_pass_the_aci_verifier(context: Path, tsm: ConfigfsTsmProvider) -> None:
    provider = AzureAciProvider(tsm, context)
    evidence = provider.report(report_data_for(RUNTIME_DATA))
    assert evidence.report == REPORT and evidence.uvm_endorsement == ENDORSEMENT
    request = sev_snp_request(evidence.report, evidence.vcek_chain_pem, RUNTIME_DATA, "4711",
                              uvm_endorsement=evidence.uvm_endorsement)  # fmt: skip
    verified = verify_aci_evidence(load_aci_evidence(request), cce_policy=CCE_POLICY, trusted_roots=AMD_ROOTS, now=NOW)
    assert verified.checks == ("cce-policy", "snp-report", "uvm-endorsement", "uvm-measurement", "runtime-data", "host-data")
    assert verified.claims()["nonce"] == "4711"
    assert provider.tee_type == "azure-aci"


@pytest.mark.parametrize("name", [HOST_AMD_CERT, REFERENCE_INFO, SECURITY_POLICY])
def test_a_missing_file_is_named(context: Path, tsm: ConfigfsTsmProvider, name: str) -> None:
    (context / name).unlink()
    with pytest.raises(EvidenceUnavailable, match=name):
        AzureAciProvider(tsm, context)


@pytest.mark.parametrize("name", [HOST_AMD_CERT, REFERENCE_INFO, SECURITY_POLICY])
@pytest.mark.parametrize("content", [b"not base64!", b"QQ", b"", b"QUJD\n\n"], ids=["alphabet", "padding", "empty", "two-newlines"])
def test_bad_base64_is_refused_by_file(context: Path, tsm: ConfigfsTsmProvider, name: str, content: bytes) -> None:
    (context / name).write_bytes(content)
    with pytest.raises(EvidenceError, match=name):
        AzureAciProvider(tsm, context)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        (REFERENCE_INFO, b"\xa0", "COSE_Sign1"),
        (REFERENCE_INFO, ENDORSEMENT[:-40], "cose-structure"),
        (HOST_AMD_CERT, b"{}", "vcekCert"),
        (HOST_AMD_CERT, b"[1]", "must be an object"),
        (HOST_AMD_CERT, CHAIN_PEM, "THIM's JSON"),
        (HOST_AMD_CERT, json.dumps({"vcekCert": "", "certificateChain": ""}).encode(), "found 0 certificates"),
    ],
    ids=["not-cose", "truncated-cose", "no-vcek", "not-object", "bare-pem", "no-certificates"],
)
def test_contents_that_do_not_parse_are_refused_by_file(
    context: Path, tsm: ConfigfsTsmProvider, name: str, content: bytes, reason: str
) -> None:
    (context / name).write_bytes(base64.b64encode(content))
    with pytest.raises(EvidenceError, match=rf"{name}.*{reason}"):
        AzureAciProvider(tsm, context)


def test_a_policy_that_is_not_the_uvms_is_refused_at_report(context: Path, tsm: ConfigfsTsmProvider) -> None:
    (context / SECURITY_POLICY).write_bytes(base64.b64encode(b"package policy\n"))
    provider = AzureAciProvider(tsm, context)
    with pytest.raises(EvidenceError, match="HOST_DATA .* not this UVM's"):
        provider.report(report_data_for(RUNTIME_DATA))


def test_one_trailing_newline_is_accepted(context: Path, tsm: ConfigfsTsmProvider) -> None:
    (context / SECURITY_POLICY).write_text(POLICY_BASE64 + "\n")
    assert AzureAciProvider(tsm, context).cce_policy.sha256.hex() in CCE_POLICY.decode()


def test_without_a_security_context_the_provider_says_why(tmp_path: Path, tsm: ConfigfsTsmProvider) -> None:
    with pytest.raises(EvidenceUnavailable, match="UVM_SECURITY_CONTEXT_DIR"):
        AzureAciProvider(tsm, tmp_path / "missing")


def test_the_attestation_stand_in_gives_the_providers_request_a_uvm_token(
    context: Path, tsm: ConfigfsTsmProvider, tmp_path: Path
) -> None:
    evidence = AzureAciProvider(tsm, context).report(report_data_for(RUNTIME_DATA))
    request = sev_snp_request(evidence.report, evidence.vcek_chain_pem, RUNTIME_DATA, "4711",
                              uvm_endorsement=evidence.uvm_endorsement)  # fmt: skip
    client = service(tmp_path / "maa", SimulatedSnpPlatform.load_or_create(tmp_path / "platform"), None)
    response = client.post("/attest/SevSnpVm?api-version=2022-08-01", json=request)
    assert response.status_code == 200, response.text
    claims = decode(client, response.json()["token"])
    assert claims["x-ms-compliance-status"] == "azure-compliant-uvm" and claims["nonce"] == "4711"
    assert claims["x-ms-sevsnpvm-hostdata"] in CCE_POLICY.decode()
