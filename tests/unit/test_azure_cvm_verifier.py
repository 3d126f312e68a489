"""The Azure CVM verifier on genuine evidence captured on Azure: accepted for its nonce; refused, naming the
check, after any change to a signed or bound byte, with a chain rooted elsewhere, or for another nonce."""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.attestation.maa import report_data_for
from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.azure_cvm.hcl import HclReport, RuntimeClaims, VmConfiguration
from securetrain.core.azure_cvm.tpm import ClockInfo, QuoteAttestation, QuoteSignature, TpmQuote
from securetrain.core.azure_cvm.verifier import verify_cvm_document, verify_cvm_evidence
from securetrain.core.snp.certs import UntrustedRoot
from securetrain.core.snp.report import GuestPolicy
from securetrain.core.snp.roots import AMD_ROOTS
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform

CVM = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "azure-cvm"
DOCUMENT = json.loads(CVM.joinpath("evidence.json").read_text())
NONCE = base64.b64decode(DOCUMENT["report"]["snpCvm"]["nonce"])
# Inside the validity of the captured VCEK (2025-01-28 to 2032-01-28) and of AMD's Milan ASK and ARK.
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
HCL_CLAIMS_OFFSET = 1236
QUOTE = base64.b64decode(DOCUMENT["report"]["snpCvm"]["evidence"]["tpmQuote"])
QUOTE_SIGNATURE_OFFSET = 2 + int.from_bytes(QUOTE[:2], "big") + 6


def verify(document: dict[str, Any], nonce: bytes | None = NONCE, roots=AMD_ROOTS):
    return verify_cvm_evidence(CvmEvidence.from_document(document), nonce=nonce, trusted_roots=roots, now=NOW)


def refused(document: dict[str, Any], check: Check, nonce: bytes | None = NONCE, roots=AMD_ROOTS) -> CvmEvidenceError:
    with pytest.raises(CvmEvidenceError) as error:
        verify(document, nonce, roots)
    assert error.value.check is check, error.value
    assert check.value in str(error.value)
    return error.value


def edited_document(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    change(document["report"]["snpCvm"])
    return document


def with_blob(field: str, change: Callable[[bytearray], None]) -> dict[str, Any]:
    """The document with evidence field ``field`` (base64) decoded, changed and encoded again."""

    def edit(snp_cvm: dict[str, Any]) -> None:
        blob = bytearray(base64.b64decode(snp_cvm["evidence"][field]))
        change(blob)
        snp_cvm["evidence"][field] = base64.b64encode(bytes(blob)).decode()

    return edited_document(edit)


def flip(offset: int, mask: int = 0x01) -> Callable[[bytearray], None]:
    def change(blob: bytearray) -> None:
        blob[offset] ^= mask

    return change


def with_hcl_and_snp_report(change: Callable[[bytearray], None]) -> dict[str, Any]:
    """Change the HCL report, and the document's copy of its SNP report with it (so the copy check passes)."""
    document = with_blob("hclReport", change)
    snp_cvm = document["report"]["snpCvm"]
    hcl = base64.b64decode(snp_cvm["evidence"]["hclReport"])
    snp_cvm["evidence"]["snpReport"] = base64.b64encode(hcl[32:1216]).decode()
    return document


def test_genuine_evidence_verifies_for_its_nonce() -> None:
    verified = verify(DOCUMENT)
    assert verified.snp.root.name == "AMD ARK-Milan" and not verified.simulated
    assert verified.nonce == NONCE and verified.nonce_expected
    assert not verified.debuggable and verified.vmpl == 0
    assert verified.reported_tcb.snp == 24 and verified.reported_tcb.microcode == 219
    assert sorted(verified.pcrs) == list(range(24))
    assert verified.user_data == hashlib.sha256(CVM.joinpath("runtime-key.pub.pem").read_bytes()).digest() + bytes(32)
    assert verified.ak_certificate.issuer_name == "CN=Global Virtual TPM CA - 03"
    assert verified.ak_certificate.subject_name.endswith(".ConfidentialVM.Azure.windows.net")
    assert verified.bound_public_key_pem == CVM.joinpath("runtime-key.pub.pem").read_text()


def test_the_serial_number_0_vcek_is_read_without_warnings() -> None:
    """The captured VCEK has serial number 0, which cryptography's X.509 loader warns about (and will refuse)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify(DOCUMENT)


def test_claims_are_maa_azureguest_claims() -> None:
    claims = verify(DOCUMENT).claims()
    json.dumps(claims)  # JSON-ready
    assert claims["x-ms-attestation-type"] == "azurevm"
    assert claims["x-ms-azurevm-vmid"] == "BDD43C6F-0B79-4D3F-BE6A-C594AF3BAF6E"
    assert claims["x-ms-azurevm-attested-pcrs"] == list(range(24))
    assert claims["x-ms-azurevm-attested-pcr-values"]["pcr7"] == DOCUMENT["report"]["snpCvm"]["evidence"]["pcrs"]["7"]
    assert claims["nonce"] == DOCUMENT["report"]["snpCvm"]["nonce"]
    assert claims["x-securetrain-platform"] == "amd-sev-snp"
    tee = claims["x-ms-isolation-tee"]
    assert tee["x-ms-attestation-type"] == "sevsnpvm"
    assert tee["x-ms-compliance-status"] == "azure-compliant-cvm"
    assert tee["x-ms-sevsnpvm-is-debuggable"] is False and tee["x-ms-sevsnpvm-vmpl"] == 0
    assert tee["x-ms-sevsnpvm-launchmeasurement"].startswith("6a063be9")
    assert tee["x-ms-sevsnpvm-smt-allowed"] is True
    # The runtime claims as the paravisor wrote and the chip signed them, not the document's unsigned copy.
    assert tee["x-ms-runtime"]["vm-configuration"] == {
        "console-enabled": True, "secure-boot": True, "tpm-enabled": True, "vmUniqueId": "BDD43C6F-0B79-4D3F-BE6A-C594AF3BAF6E",
    }
    assert "x-ms-policy-hash" not in claims


def test_verify_cvm_document_is_the_command_lines_entry_point() -> None:
    result = verify_cvm_document(DOCUMENT, nonce=NONCE, now=NOW)
    assert result == verify(DOCUMENT).to_dict()
    assert result["platform"] == "azure-cvm" and result["fresh"] and result["bound_public_key"]
    assert result["snp_root"]["name"] == "AMD ARK-Milan" and not result["simulated"]
    assert not verify_cvm_document(DOCUMENT, now=NOW)["fresh"]


def test_without_a_nonce_the_quote_still_answers_for_the_documents_nonce() -> None:
    assert not verify(DOCUMENT, nonce=None).nonce_expected
    refused(edited_document(lambda s: s.update(nonce=base64.b64encode(bytes(32)).decode())), Check.QUOTE_NONCE, nonce=None)


def test_another_nonce_is_refused() -> None:
    refused(DOCUMENT, Check.EXPECTED_NONCE, nonce=bytes(32))
    refused(DOCUMENT, Check.EXPECTED_NONCE, nonce=NONCE[:-1])


def test_a_changed_document_nonce_is_refused() -> None:
    nonce = bytearray(NONCE)
    nonce[0] ^= 1
    refused(edited_document(lambda s: s.update(nonce=base64.b64encode(bytes(nonce)).decode())), Check.QUOTE_NONCE)


def test_every_runtime_claims_byte_is_bound() -> None:
    """Any change to the claims the chip signed — one bit of any byte — is refused."""
    size = len(RuntimeClaims.from_bytes(HclReport.from_bytes(base64.b64decode(
        DOCUMENT["report"]["snpCvm"]["evidence"]["hclReport"])).runtime_claims).raw)
    for offset in range(HCL_CLAIMS_OFFSET, HCL_CLAIMS_OFFSET + size):
        with pytest.raises(CvmEvidenceError) as error:
            verify(with_blob("hclReport", flip(offset, 1 << offset % 8)))
        assert error.value.check in (Check.RUNTIME_CLAIMS, Check.RUNTIME_CLAIMS_BINDING)


def test_changed_user_data_or_vm_id_breaks_the_binding() -> None:
    hcl = base64.b64decode(DOCUMENT["report"]["snpCvm"]["evidence"]["hclReport"])
    for old, new in ((b'"user-data":"E2', b'"user-data":"F2'), (b"BDD43C6F", b"BDD43C6E")):
        start = hcl.index(old)

        def change(blob: bytearray, start: int = start, new: bytes = new) -> None:
            blob[start : start + len(new)] = new

        refused(with_blob("hclReport", change), Check.RUNTIME_CLAIMS_BINDING)


def test_every_snp_report_byte_is_protected() -> None:
    for offset in range(32, 32 + 1184):
        with pytest.raises(CvmEvidenceError) as error:
            verify(with_hcl_and_snp_report(flip(offset, 1 << offset % 8)))
        assert error.value.check is Check.SNP_REPORT


def test_the_documents_snp_report_must_be_the_hcl_reports() -> None:
    refused(with_blob("snpReport", flip(0x90)), Check.SNP_REPORT_COPY)


def test_a_chain_rooted_elsewhere_is_refused(tmp_path: Path) -> None:
    platform = SimulatedSnpPlatform.load_or_create(tmp_path / "platform")
    # AMD's chain, but only a self-made ARK trusted.
    error = refused(DOCUMENT, Check.SNP_REPORT, roots=(platform.root,))
    assert isinstance(error.__cause__, UntrustedRoot)
    # A self-made chain in the document: not AMD's; and even if trusted, its VCEK did not sign this report.
    report = platform.report(report_data=bytes(64), measurement=bytes(48), host_data=bytes(32))
    forged = edited_document(lambda s: s.update(platformCertificates=report.vcek_chain_pem.decode()))
    assert isinstance(refused(forged, Check.SNP_REPORT).__cause__, UntrustedRoot)
    refused(forged, Check.SNP_REPORT, roots=(platform.root,))


def test_every_quote_attest_byte_is_protected() -> None:
    for offset in range(2, QUOTE_SIGNATURE_OFFSET - 6):
        with pytest.raises(CvmEvidenceError) as error:
            verify(with_blob("tpmQuote", flip(offset, 1 << offset % 8)))
        assert error.value.check in (Check.QUOTE_LAYOUT, Check.QUOTE_SIGNATURE)


def test_every_quote_signature_byte_is_protected() -> None:
    for offset in range(QUOTE_SIGNATURE_OFFSET, len(QUOTE)):
        refused(with_blob("tpmQuote", flip(offset, 1 << offset % 8)), Check.QUOTE_SIGNATURE)


def test_every_pcr_value_is_covered() -> None:
    for index in range(24):
        def change(snp_cvm: dict[str, Any], index: int = index) -> None:
            value = bytearray(base64.b64decode(snp_cvm["evidence"]["pcrs"][str(index)]))
            value[index] ^= 0x80
            snp_cvm["evidence"]["pcrs"][str(index)] = base64.b64encode(bytes(value)).decode()

        refused(edited_document(change), Check.PCR_DIGEST)


def test_the_pcrs_must_be_those_the_quote_selects() -> None:
    refused(edited_document(lambda s: s["evidence"]["pcrs"].pop("23")), Check.PCR_DIGEST)


def test_the_ak_certificate_must_be_for_hclakpub(rsa_key: rsa.RSAPrivateKey) -> None:
    other = ak_certificate(rsa_key, rsa_key.public_key()).public_bytes(serialization.Encoding.DER)
    error = refused(edited_document(lambda s: s["evidence"].update(aikCert=base64.b64encode(other).decode())), Check.AK_CERTIFICATE)
    assert "not for HCLAkPub" in str(error)
    refused(with_blob("aikCert", flip(4095)), Check.AK_CERTIFICATE)
    refused(with_blob("aikCert", flip(0)), Check.AK_CERTIFICATE)
    # Its signature is not verified (Azure's vTPM CA is not pinned), but its key must be HCLAkPub's.
    aik_cert = base64.b64decode(DOCUMENT["report"]["snpCvm"]["evidence"]["aikCert"])
    modulus = verify(DOCUMENT).runtime_claims.ak_public_key.public_numbers().n.to_bytes(256, "big")
    refused(with_blob("aikCert", flip(aik_cert.index(modulus) + 100)), Check.AK_CERTIFICATE)


def test_user_data_must_bind_the_documents_public_key() -> None:
    document = copy.deepcopy(DOCUMENT)
    document["publicKey"] = document["publicKey"].replace("\n", "\r\n")
    refused(document, Check.USER_DATA_KEY)
    del document["publicKey"]
    assert verify(document).bound_public_key_pem is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.update(extra=1), "extra: unknown field"),
        (lambda d: d["report"].update(snpCACI={}), "snpCACI: unknown field"),
        (lambda d: d["report"]["snpCvm"]["evidence"].pop("aikCert"), "aikCert: required"),
        (lambda d: d["report"]["snpCvm"]["evidence"].update(tpmQuote=QUOTE.hex()), "tpmQuote: is not"),
        (lambda d: d["report"]["snpCvm"]["evidence"]["pcrs"].update({"24": "AA=="}), "PCR 24"),
        (lambda d: d["report"]["snpCvm"]["evidence"]["pcrs"].update({"0": "AA=="}), "not a SHA-256 PCR value"),
        (lambda d: d["report"]["snpCvm"]["imageReference"].update(sku=1), "sku"),
        (lambda d: d["report"]["snpCvm"].update(nonce=base64.b64encode(bytes(65)).decode()), "more than 64"),
        (lambda d: d["report"]["snpCvm"].update(nonce=""), "nonce: is empty"),
    ],
)
def test_the_document_shape_is_enforced(change: Callable[[dict[str, Any]], None], reason: str) -> None:
    document = copy.deepcopy(DOCUMENT)
    change(document)
    with pytest.raises(CvmEvidenceError, match=reason) as error:
        CvmEvidence.from_document(document)
    assert error.value.check is Check.DOCUMENT


def test_the_documents_unsigned_runtime_claims_copy_is_not_trusted() -> None:
    document = copy.deepcopy(DOCUMENT)
    document["report"]["snpCvm"]["evidence"]["runtimeClaims"]["vm-configuration"]["secure-boot"] = False
    claims = verify(document).claims()
    assert claims["x-ms-isolation-tee"]["x-ms-runtime"]["vm-configuration"]["secure-boot"] is True


def test_from_json_is_strict() -> None:
    raw = CVM.joinpath("evidence.json").read_bytes()
    assert CvmEvidence.from_json(raw) == CvmEvidence.from_document(DOCUMENT)
    with pytest.raises(CvmEvidenceError, match="twice") as error:
        CvmEvidence.from_json(b'{"report": {}, "report": {}}')
    assert error.value.check is Check.DOCUMENT


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["hclReport", "tpmQuote"]),
    st.data(),
    st.integers(1, 255),
)
def test_mutated_signed_bytes_never_verify(field: str, data: st.DataObject, mask: int) -> None:
    blob = base64.b64decode(DOCUMENT["report"]["snpCvm"]["evidence"][field])
    # The HCL report's bytes up to the end of the runtime claims; all of the quote.
    end = 2346 if field == "hclReport" else len(blob)
    offset = data.draw(st.integers(0, end - 1))
    document = with_hcl_and_snp_report(flip(offset, mask)) if field == "hclReport" else with_blob(field, flip(offset, mask))
    try:
        verify(document)
    except CvmEvidenceError:
        return
    # Only the HCL header's version may change and still verify: version 1 and 2 are both Azure's.
    assert field == "hclReport" and offset in (4,) and (1 ^ mask) == 2


# A complete simulated Azure CVM, made with the build side the local stack's simulated paravisor uses.
def ak_certificate(issuer_key: rsa.RSAPrivateKey, ak_public_key: rsa.RSAPublicKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Simulated Virtual TPM CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vm.ConfidentialVM.simulated")]))
        .issuer_name(name)
        .public_key(ak_public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .sign(issuer_key, hashes.SHA256())
    )


def simulated_document(
    platform: SimulatedSnpPlatform, ak: rsa.RSAPrivateKey, ek: rsa.RSAPrivateKey, *, debug: bool
) -> dict[str, Any]:
    nonce = bytes(range(32))
    claims = RuntimeClaims.build(
        ak_public_key=ak.public_key(),
        ek_public_key=ek.public_key(),
        vm_configuration=VmConfiguration(console_enabled=False, secure_boot=True, tpm_enabled=True, vm_unique_id="SIM-VM"),
        user_data=bytes(64),
    )
    snp = platform.report(
        report_data=report_data_for(claims.to_bytes()),
        measurement=bytes(range(48)),
        host_data=bytes(32),
        policy=GuestPolicy.build(debug=debug),
    )
    pcrs = {index: hashlib.sha256(bytes([index])).digest() for index in (0, 1, 2, 7)}
    attestation = QuoteAttestation(
        qualified_signer=b"\x00\x0b" + bytes(32),
        extra_data=nonce,
        clock_info=ClockInfo(clock=1, reset_count=0, restart_count=0, safe=True),
        firmware_version=0,
        pcr_indexes=tuple(pcrs),
        pcr_digest=hashlib.sha256(b"".join(pcrs.values())).digest(),
    )
    attested = attestation.to_bytes()
    quote = TpmQuote(attested, attestation, QuoteSignature(ak.sign(attested, padding.PKCS1v15(), hashes.SHA256())))
    aik_cert = ak_certificate(ek, ak.public_key()).public_bytes(serialization.Encoding.DER)

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    hcl = HclReport.build(snp.report, claims.to_bytes()).to_bytes()
    return {
        "report": {
            "snpCvm": {
                "evidence": {
                    "tpmQuote": b64(quote.to_bytes()),
                    "hclReport": b64(hcl + bytes(2600 - len(hcl))),
                    "snpReport": b64(snp.report),
                    "aikCert": b64(aik_cert + bytes(4096 - len(aik_cert))),
                    "pcrs": {str(index): b64(value) for index, value in pcrs.items()},
                },
                "nonce": b64(nonce),
                "platformCertificates": snp.vcek_chain_pem.decode(),
            }
        }
    }


def test_simulated_cvm_verifies_under_its_own_root_and_says_so(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    platform = SimulatedSnpPlatform.load_or_create(tmp_path / "platform")
    document = simulated_document(platform, rsa_key, other_rsa_key, debug=False)
    claims = verify_cvm_document(document, nonce=bytes(range(32)), trusted_roots=(platform.root,))["claims"]
    assert claims["x-securetrain-platform"] == "simulated"
    assert claims["x-ms-isolation-tee"]["x-ms-compliance-status"] == "securetrain-simulated-cvm"
    assert claims["x-ms-azurevm-attested-pcrs"] == [0, 1, 2, 7]
    assert claims["x-ms-azurevm-vmid"] == "SIM-VM"
    with pytest.raises(CvmEvidenceError) as error:
        verify_cvm_document(document, nonce=bytes(range(32)))
    assert error.value.check is Check.SNP_REPORT


def test_a_debuggable_guest_is_refused_by_default(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    platform = SimulatedSnpPlatform.load_or_create(tmp_path / "platform")
    document = simulated_document(platform, rsa_key, other_rsa_key, debug=True)
    with pytest.raises(CvmEvidenceError) as error:
        verify_cvm_document(document, trusted_roots=(platform.root,))
    assert error.value.check is Check.DEBUG_DISABLED
    claims = verify_cvm_document(document, trusted_roots=(platform.root,), allow_debug=True)["claims"]
    assert claims["x-ms-isolation-tee"]["x-ms-sevsnpvm-is-debuggable"] is True
