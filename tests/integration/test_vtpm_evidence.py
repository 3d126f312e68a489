"""The TEE's Azure CVM provider against the emulated CVM: a document shaped and bound like genuine Azure evidence.

Every binding is checked on the genuine evidence captured on Azure too (``testdata/azure-cvm``), with the same
test code: what the emulation produces holds together exactly as Azure's does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from securetrain.core.approved_release_policies import AzureCvmReferenceValues, approved_release_policy
from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.azure_cvm.verifier import verify_cvm_evidence
from securetrain.core.azure_cvm.workload import workload_pcr_value
from securetrain.core.release_policy import ReleaseDenied, evaluate
from securetrain.core.snp.certs import CertificateChain
from securetrain.core.snp.roots import AMD_ROOTS
from securetrain.core.snp.verifier import verify_report
from securetrain.localstack.platform.local_cvm import LAUNCH_MEASUREMENT
from securetrain.localstack.platform.measured_boot import WORKLOAD_EVENT_TAG, WORKLOAD_PCR, workload_event
from securetrain.localstack.standins.imds.app import LOCAL_IMAGE_REFERENCE
from securetrain.tee.evidence.azure_cvm import QUOTED_PCRS
from tests.integration.conftest import WORKLOAD_MEASUREMENT

pytestmark = pytest.mark.integration

GENUINE = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "azure-cvm" / "evidence.json"
USER_DATA = hashlib.sha256(b"the TEE's runtime key").digest() + bytes(32)
NONCE = secrets.token_bytes(32)
REPORT_DATA = slice(0x50, 0x90)
MEASUREMENT = slice(0x90, 0xC0)
HOST_DATA = slice(0xC0, 0xE0)


@pytest.fixture(scope="module")
def emulated(emulated_cvm) -> dict[str, Any]:
    return emulated_cvm.provider().evidence(USER_DATA, NONCE)


@pytest.fixture(scope="module")
def genuine() -> dict[str, Any]:
    return json.loads(GENUINE.read_text())["report"]["snpCvm"]


@pytest.fixture(params=["genuine", "emulated"])
def document(request) -> dict[str, Any]:
    return request.getfixturevalue(request.param)


def field(document: dict[str, Any], name: str) -> bytes:
    return base64.b64decode(document["evidence"][name])


def tpm2b(data: bytes, offset: int) -> tuple[bytes, int]:
    size = int.from_bytes(data[offset : offset + 2], "big")
    return data[offset + 2 : offset + 2 + size], offset + 2 + size


def quote_parts(document: dict[str, Any]) -> dict[str, Any]:
    """TPM2B_ATTEST then TPMT_SIGNATURE, read with struct as the TPM 2.0 spec lays them out."""
    quote = field(document, "tpmQuote")
    attest, offset = tpm2b(quote, 0)
    algorithm, hash_algorithm = struct.unpack_from(">HH", quote, offset)
    signature, end = tpm2b(quote, offset + 4)
    assert end == len(quote)
    magic, kind = struct.unpack_from(">IH", attest)
    _, position = tpm2b(attest, 6)  # qualifiedSigner
    extra_data, position = tpm2b(attest, position)
    position += 17 + 8  # clockInfo, firmwareVersion
    (selections,) = struct.unpack_from(">I", attest, position)
    position += 4
    selected = []
    for _ in range(selections):
        bank, size = struct.unpack_from(">HB", attest, position)
        mask = attest[position + 3 : position + 3 + size]
        selected += [(bank, index) for index in range(size * 8) if mask[index // 8] >> (index % 8) & 1]
        position += 3 + size
    pcr_digest, position = tpm2b(attest, position)
    assert position == len(attest)
    return {"attest": attest, "algorithm": algorithm, "hash": hash_algorithm, "signature": signature, "magic": magic,
            "type": kind, "extra_data": extra_data, "selected": selected, "pcr_digest": pcr_digest}  # fmt: skip


def jwk_key(claims: dict[str, Any], kid: str) -> rsa.RSAPublicKey:
    [jwk] = [key for key in claims["keys"] if key["kid"] == kid]
    number = lambda value: int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")  # noqa: E731
    return rsa.RSAPublicNumbers(number(jwk["e"]), number(jwk["n"])).public_key()


def hcl_claims(document: dict[str, Any]) -> bytes:
    """The runtime claims as the HCL report carries them (the bytes the hardware signs)."""
    hcl = field(document, "hclReport")
    _, _, _, _, size = struct.unpack_from("<5I", hcl, 1216)
    return hcl[1236 : 1236 + size]


def ak_certificate(document: dict[str, Any]) -> x509.Certificate:
    """The AK certificate: a DER certificate at the start of the NV index's content, zero padding after it."""
    content = field(document, "aikCert")
    length = 4 + int.from_bytes(content[2:4], "big")  # SEQUENCE with a two-byte length
    assert content[0:2] == b"\x30\x82" and not any(content[length:])
    return x509.load_der_x509_certificate(content[:length])


def tpm2_eventlog(log: Path) -> dict[str, Any]:
    """tpm2-tools' reading of a TCG2 event log: its events, and the PCR values they replay to (YAML ints)."""
    result = subprocess.run(["tpm2_eventlog", str(log)], capture_output=True, text=True, check=True)
    assert not result.stderr, result.stderr  # tpm2_eventlog warns of events in unexpected PCRs
    return yaml.safe_load(result.stdout)


def test_the_document_has_the_shape_of_azure_evidence(emulated, genuine) -> None:
    assert emulated.keys() == genuine.keys()
    # The event log is the one field more than the captured document has (Azure sends MAA the log as TcgLogs).
    assert emulated["evidence"].keys() == genuine["evidence"].keys() | {"eventLog"}
    assert emulated["evidence"]["pcrs"].keys() == genuine["evidence"]["pcrs"].keys() == {str(i) for i in QUOTED_PCRS}
    assert emulated["evidence"]["runtimeClaims"].keys() == genuine["evidence"]["runtimeClaims"].keys()
    assert list(emulated["imageReference"]) == list(genuine["imageReference"])
    assert emulated["imageReference"] == LOCAL_IMAGE_REFERENCE
    assert base64.b64decode(emulated["nonce"]) == NONCE
    assert len(field(emulated, "hclReport")) == len(field(genuine, "hclReport")) == 2600


def test_the_quote_is_signed_by_the_ak_the_runtime_claims_name(document) -> None:
    quote = quote_parts(document)
    assert (quote["magic"], quote["type"]) == (0xFF544347, 0x8018)  # TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE
    assert (quote["algorithm"], quote["hash"]) == (0x0014, 0x000B)  # RSASSA, SHA-256
    ak = jwk_key(document["evidence"]["runtimeClaims"], "HCLAkPub")
    ak.verify(quote["signature"], quote["attest"], padding.PKCS1v15(), hashes.SHA256())


def test_the_quote_carries_the_nonce(document) -> None:
    assert quote_parts(document)["extra_data"] == base64.b64decode(document["nonce"])


def test_the_quote_covers_the_pcr_values_handed_on(document) -> None:
    quote = quote_parts(document)
    assert quote["selected"] == [(0x000B, index) for index in QUOTED_PCRS]
    values = b"".join(base64.b64decode(document["evidence"]["pcrs"][str(index)]) for index in QUOTED_PCRS)
    assert quote["pcr_digest"] == hashlib.sha256(values).digest()


def test_the_snp_report_binds_the_runtime_claims(document) -> None:
    hcl, report = field(document, "hclReport"), field(document, "snpReport")
    assert hcl[:4] == b"HCLA" and hcl[32:1216] == report
    assert report[REPORT_DATA] == hashlib.sha256(hcl_claims(document)).digest() + bytes(32)
    assert report[HOST_DATA] == bytes(32)
    assert json.loads(hcl_claims(document))["user-data"] == document["evidence"]["runtimeClaims"]["user-data"]


def test_the_ak_certificate_certifies_the_hcl_ak(document) -> None:
    ak = jwk_key(document["evidence"]["runtimeClaims"], "HCLAkPub")
    assert ak_certificate(document).public_key() == ak


def test_the_runtime_claims_carry_the_user_data_written(emulated) -> None:
    claims = emulated["evidence"]["runtimeClaims"]
    assert claims == json.loads(hcl_claims(emulated))
    assert bytes.fromhex(claims["user-data"]) == USER_DATA
    assert claims["user-data"] == USER_DATA.hex().upper()  # as the genuine report writes it


def test_the_emulated_platform_signs_and_certifies_it(emulated, emulated_cvm) -> None:
    chain = CertificateChain.from_pem_bundle(emulated["platformCertificates"].encode())
    verified = verify_report(field(emulated, "snpReport"), chain, [emulated_cvm.snp.root])
    assert verified.simulated and verified.report.measurement == LAUNCH_MEASUREMENT
    certificate = ak_certificate(emulated)
    certificate.verify_directly_issued_by(emulated_cvm.vtpm_ca.certificate)
    assert x509.ObjectIdentifier("2.23.133.8.3") in certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ek = jwk_key(emulated["evidence"]["runtimeClaims"], "HCLEkPub")
    assert ek.key_size == 2048 and ek != jwk_key(emulated["evidence"]["runtimeClaims"], "HCLAkPub")


def test_the_event_log_replays_to_the_quoted_workload_pcr(emulated, tmp_path) -> None:
    log = tmp_path / "binary_bios_measurements"
    log.write_bytes(field(emulated, "eventLog"))
    parsed = tpm2_eventlog(log)
    [event] = [event for event in parsed["events"] if event["PCRIndex"] == WORKLOAD_PCR]
    assert event["EventType"] == "EV_EVENT_TAG"
    assert bytes.fromhex(event["Event"]) == workload_event(WORKLOAD_MEASUREMENT)
    tag, size = struct.unpack_from("<II", bytes.fromhex(event["Event"]))
    assert (tag, size, bytes.fromhex(event["Event"])[8:]) == (WORKLOAD_EVENT_TAG, 32, WORKLOAD_MEASUREMENT)
    [sha256] = [digest["Digest"] for digest in event["Digests"] if digest["AlgorithmId"] == "sha256"]
    assert bytes.fromhex(sha256) == hashlib.sha256(WORKLOAD_MEASUREMENT).digest()
    quoted = base64.b64decode(emulated["evidence"]["pcrs"][str(WORKLOAD_PCR)])
    assert quoted == hashlib.sha256(bytes(32) + bytes.fromhex(sha256)).digest()
    assert quoted == parsed["pcrs"]["sha256"][WORKLOAD_PCR].to_bytes(32, "big")


def test_new_user_data_gets_a_new_report(emulated, emulated_cvm) -> None:
    other = secrets.token_bytes(64)
    again = emulated_cvm.provider().evidence(other, NONCE)
    assert bytes.fromhex(again["evidence"]["runtimeClaims"]["user-data"]) == other
    assert field(again, "snpReport")[REPORT_DATA] == hashlib.sha256(hcl_claims(again)).digest() + bytes(32)
    assert field(again, "snpReport")[REPORT_DATA] != field(emulated, "snpReport")[REPORT_DATA]
    # The vTPM's identity is the same for every report.
    assert again["evidence"]["runtimeClaims"]["keys"] == emulated["evidence"]["runtimeClaims"]["keys"]


def test_the_core_verifier_accepts_the_emulated_evidence_under_the_simulated_root(emulated_cvm, emulated) -> None:
    """The emulation speaks Azure's format: the verifier that accepts the genuine evidence accepts it, rooted in the
    simulated platform (which AMD's roots alone refuse), and sees the workload in its PCR."""
    document = {"report": {"snpCvm": emulated}}
    verified = verify_cvm_evidence(CvmEvidence.from_document(document), nonce=NONCE, trusted_roots=(emulated_cvm.snp.root,))
    assert verified.simulated and verified.user_data == USER_DATA
    assert verified.report.measurement == LAUNCH_MEASUREMENT and verified.report.host_data == bytes(32)
    assert verified.pcrs[WORKLOAD_PCR] != bytes(32)
    with pytest.raises(CvmEvidenceError) as refused:
        verify_cvm_evidence(CvmEvidence.from_document(document), nonce=NONCE, trusted_roots=AMD_ROOTS)
    assert refused.value.check is Check.SNP_REPORT


def test_the_emulated_cvm_satisfies_the_azure_cvm_release_policy_for_its_workload(emulated_cvm, emulated) -> None:
    """What the local stack's release policy becomes once it runs the emulated CVM: the platform's approved policy,
    simulated, pinning the PCR its boot measured the workload into; another workload's PCR value is refused."""
    verified = verify_cvm_evidence(CvmEvidence.from_document({"report": {"snpCvm": emulated}}), nonce=NONCE,
                                   trusted_roots=(emulated_cvm.snp.root,))  # fmt: skip
    authority, attestation_policy = "https://attestation.example", "version=1.0;\nauthorizationrules\n{\n};\n"
    claims = {**verified.claims(), "iss": authority, "x-ms-policy-hash": maa_policy_hash(attestation_policy)}

    def policy_for(measurement: bytes):
        return approved_release_policy(AzureCvmReferenceValues(
            attestation_authority=authority, attestation_policy=attestation_policy, simulated=True,
            workload_pcr_values=frozenset({workload_pcr_value(measurement).hex()}),
        ))  # fmt: skip

    evaluate(policy_for(WORKLOAD_MEASUREMENT), claims)
    with pytest.raises(ReleaseDenied, match=f"x-ms-azurevm-attested-pcr-values.pcr{WORKLOAD_PCR}"):
        evaluate(policy_for(bytes(32)), claims)
