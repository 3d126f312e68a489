"""The HCL report and its runtime claims: the genuine Azure CVM report reads (and rebuilds) byte for byte;
every layout rule refuses with the project's error; hostile bytes never escape as anything else."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.core.azure_cvm.errors import Check, CvmEvidenceError
from securetrain.core.azure_cvm.hcl import HclReport, RuntimeClaims, VmConfiguration
from securetrain.core.errors import ConfigurationError
from securetrain.core.snp.report import AttestationReport

CVM = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "azure-cvm"
EVIDENCE = json.loads(CVM.joinpath("evidence.json").read_text())["report"]["snpCvm"]["evidence"]
# As read from NV index 0x01400001: 2346 bytes of report, then zeros to the index's 2600 bytes.
GENUINE_NV = base64.b64decode(EVIDENCE["hclReport"])
GENUINE = HclReport.from_bytes(GENUINE_NV)
REPORT_SIZE = len(GENUINE.to_bytes())


def flipped(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def with_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4 :]


def test_genuine_hcl_report_reads_as_azure_wrote_it() -> None:
    assert GENUINE_NV[:4] == b"HCLA"
    assert GENUINE.header_version == 1
    assert REPORT_SIZE == 2346 and len(GENUINE_NV) == 2600
    assert GENUINE.snp_report == base64.b64decode(EVIDENCE["snpReport"])
    assert len(GENUINE.runtime_claims) == 1110
    # The chip signed the claims: REPORT_DATA is their SHA-256 and 32 zero bytes.
    report = AttestationReport.from_bytes(GENUINE.snp_report)
    assert report.report_data == hashlib.sha256(GENUINE.runtime_claims).digest() + bytes(32)


def test_to_bytes_is_the_report_without_its_nv_padding() -> None:
    assert GENUINE.to_bytes() == GENUINE_NV[:REPORT_SIZE]
    assert HclReport.from_bytes(GENUINE.to_bytes()) == GENUINE


def test_build_writes_what_azure_wrote() -> None:
    assert HclReport.build(GENUINE.snp_report, GENUINE.runtime_claims).to_bytes() == GENUINE.to_bytes()


def test_build_refuses_wrong_sizes() -> None:
    with pytest.raises(ConfigurationError, match="1184 bytes"):
        HclReport.build(GENUINE.snp_report[:-1], GENUINE.runtime_claims)
    with pytest.raises(ConfigurationError, match="runtime claims"):
        HclReport.build(GENUINE.snp_report, b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HCLA" + bytes(100), "shorter than"),
        (b"HCLB" + GENUINE_NV[4:], "signature"),
        (with_u32(GENUINE_NV, 4, 3), "header version 3"),
        (with_u32(GENUINE_NV, 8, REPORT_SIZE + 1), "report size"),
        (with_u32(GENUINE_NV, 12, 1), "request type 1"),
        (with_u32(GENUINE_NV, 16, 1), "status is 1"),
        (flipped(GENUINE_NV, 28), "reserved"),
        (with_u32(GENUINE_NV, 1216, 1131), "request data size"),
        (with_u32(GENUINE_NV, 1220, 2), "request data version 2"),
        (with_u32(GENUINE_NV, 1224, 4), "report type 4"),
        (with_u32(GENUINE_NV, 1228, 2), "hash type 2"),
        (with_u32(GENUINE_NV, 1232, 0), "runtime claims size 0"),
        (with_u32(GENUINE_NV, 1232, 1 << 20), "runtime claims size"),
        (GENUINE_NV[: REPORT_SIZE - 1], "beyond the"),
        (GENUINE_NV[:-1] + b"\x01", "after the report"),
    ],
)
def test_layout_rules_refuse(data: bytes, reason: str) -> None:
    with pytest.raises(CvmEvidenceError, match=reason) as refused:
        HclReport.from_bytes(data)
    assert refused.value.check is Check.HCL_REPORT_LAYOUT


def test_openhcl_header_version_2_is_read() -> None:
    assert HclReport.from_bytes(with_u32(GENUINE_NV, 4, 2)).header_version == 2


def test_genuine_runtime_claims() -> None:
    claims = RuntimeClaims.from_bytes(GENUINE.runtime_claims)
    assert claims.vm_unique_id == "BDD43C6F-0B79-4D3F-BE6A-C594AF3BAF6E"
    assert claims.vm_configuration.secure_boot and claims.vm_configuration.tpm_enabled
    assert claims.ak_public_key.key_size == 2048 and claims.ek_public_key.key_size == 2048
    # The guest bound its key: user-data is SHA-256 of the PEM as written, then 32 zero bytes.
    assert claims.user_data == hashlib.sha256(CVM.joinpath("runtime-key.pub.pem").read_bytes()).digest() + bytes(32)
    assert claims.to_json()["user-data"] == EVIDENCE["runtimeClaims"]["user-data"]


def test_runtime_claims_build_writes_what_azure_wrote() -> None:
    claims = RuntimeClaims.from_bytes(GENUINE.runtime_claims)
    rebuilt = RuntimeClaims.build(
        ak_public_key=claims.ak_public_key,
        ek_public_key=claims.ek_public_key,
        vm_configuration=claims.vm_configuration,
        user_data=claims.user_data,
    )
    assert rebuilt.to_bytes() == GENUINE.runtime_claims


def test_runtime_claims_build_by_field_name(rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey) -> None:
    configuration = VmConfiguration(console_enabled=False, secure_boot=True, tpm_enabled=True, vm_unique_id="vm-1")
    claims = RuntimeClaims.build(
        ak_public_key=rsa_key.public_key(),
        ek_public_key=other_rsa_key.public_key(),
        vm_configuration=configuration,
        user_data=bytes(range(64)),
    )
    assert claims.to_json()["vm-configuration"] == {
        "console-enabled": False, "secure-boot": True, "tpm-enabled": True, "vmUniqueId": "vm-1",
    }
    assert claims.user_data == bytes(range(64))
    assert claims.ak_public_key.public_numbers() == rsa_key.public_key().public_numbers()
    with pytest.raises(ConfigurationError, match="64 bytes"):
        RuntimeClaims.build(
            ak_public_key=rsa_key.public_key(), ek_public_key=other_rsa_key.public_key(),
            vm_configuration=configuration, user_data=bytes(32),
        )


def genuine_claims() -> dict:
    return json.loads(GENUINE.runtime_claims)


def encoded(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def edited(change) -> bytes:
    document = genuine_claims()
    change(document)
    return encoded(document)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff", "not UTF-8"),
        (b"[]", "not a JSON object"),
        (GENUINE.runtime_claims[:-1] + b',"keys":[]}', "twice"),
        (edited(lambda d: d.update(extra=1)), "extra: unknown field"),
        (edited(lambda d: d["vm-configuration"].update({"debug-enabled": True})), "unknown field"),
        (edited(lambda d: d["vm-configuration"].update({"secure-boot": "true"})), "secure-boot"),
        (edited(lambda d: d["vm-configuration"].pop("vmUniqueId")), "vmUniqueId: required"),
        (edited(lambda d: d["vm-configuration"].update(secure_boot=d["vm-configuration"].pop("secure-boot"))), "secure"),
        (edited(lambda d: d.update({"user-data": "00" * 63})), "64 bytes"),
        (edited(lambda d: d.update({"user-data": "zz" * 64})), "not hex"),
        (edited(lambda d: d["keys"].pop()), "not HCLAkPub and HCLEkPub"),
        (edited(lambda d: d["keys"].append(d["keys"][0])), "appears twice"),
        (edited(lambda d: d["keys"][0].update(key_ops=["encrypt"])), "key_ops"),
        (edited(lambda d: d["keys"][0].update(kid="HCLTransferKey")), "kid"),
        (edited(lambda d: d["keys"][0].update(kty="EC")), "kty"),
        (edited(lambda d: d["keys"][0].update(n=d["keys"][0]["n"] + "=")), "canonical"),
        (edited(lambda d: d["keys"][0].update(n="AA" + d["keys"][0]["n"])), "canonical"),
        (edited(lambda d: d["keys"][0].update(n="vTDg")), "RSA-"),
    ],
)
def test_runtime_claims_refusals(raw: bytes, reason: str) -> None:
    with pytest.raises(CvmEvidenceError, match=reason) as refused:
        RuntimeClaims.from_bytes(raw)
    assert refused.value.check is Check.RUNTIME_CLAIMS


def test_user_data_is_optional_as_in_openhcl() -> None:
    claims = RuntimeClaims.from_bytes(edited(lambda d: d.pop("user-data")))
    assert claims.user_data is None


def test_openhcl_vm_configuration_fields_are_read() -> None:
    def openhcl(document: dict) -> None:
        document["vm-configuration"].update({
            "current-time": 1691103220, "root-cert-thumbprint": "", "interactive-console-enabled": False,
            "tpm-persisted": True, "filtered-vpci-devices-allowed": True, "hardware-sealing-policy": "hash",
            "vmgs-provisioner": {"id": "00000000-0000-0000-0000-000000000000", "signer": "did:x509:0"},
        })

    configuration = RuntimeClaims.from_bytes(edited(openhcl)).vm_configuration
    assert configuration.hardware_sealing_policy == "hash" and configuration.current_time == 1691103220


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_only_ever_raise_the_projects_error(data: bytes) -> None:
    for parse in (HclReport.from_bytes, RuntimeClaims.from_bytes):
        try:
            parse(data)
        except CvmEvidenceError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(GENUINE_NV) - 1), st.integers(1, 255))
def test_single_byte_mutations_refuse_or_read_back_exactly(offset: int, mask: int) -> None:
    """The layout reader interprets every byte it accepts: a mutation it lets through is read back as mutated."""
    mutated = flipped(GENUINE_NV, offset, mask)
    try:
        report = HclReport.from_bytes(mutated)
    except CvmEvidenceError:
        return
    assert report != GENUINE
    assert report.to_bytes() == mutated[: len(report.to_bytes())]


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(GENUINE.runtime_claims) - 1), st.integers(1, 255))
def test_mutated_runtime_claims_only_ever_raise_the_projects_error(offset: int, mask: int) -> None:
    try:
        RuntimeClaims.from_bytes(flipped(GENUINE.runtime_claims, offset, mask))
    except CvmEvidenceError:
        pass
