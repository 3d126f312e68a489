"""What the emulated Azure CVM writes, byte for byte: the HCL report and runtime claims as Azure's, the TCG2 event
log as tpm2-tools reads it, THIM's answer as IMDS gives it."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from securetrain.core.snp.certs import CertificateChain
from securetrain.localstack.platform.measured_boot import (
    EV_EVENT_TAG,
    WORKLOAD_EVENT_TAG,
    WORKLOAD_PCR,
    TcgEventLog,
    workload_event,
)
from securetrain.localstack.platform.paravisor import hcl_report_bytes, runtime_claims
from securetrain.localstack.platform.snp_platform import DEFAULT_TCB, SimulatedSnpPlatform
from securetrain.localstack.platform.vtpm import VtpmKeys
from securetrain.localstack.standins.imds.app import LOCAL_IMAGE_REFERENCE, ImdsConfig, create_app
from securetrain.tee.evidence.azure_cvm import IMAGE_REFERENCE_PATH, IMDS_API_VERSION, THIM_PATH

GENUINE = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "azure-cvm" / "evidence.json"


@pytest.fixture(scope="module")
def genuine_hcl() -> bytes:
    return base64.b64decode(json.loads(GENUINE.read_text())["report"]["snpCvm"]["evidence"]["hclReport"])


def test_the_hcl_report_is_laid_out_as_the_genuine_one(genuine_hcl) -> None:
    report_size = int.from_bytes(genuine_hcl[8:12], "little")
    claims_size = int.from_bytes(genuine_hcl[1232:1236], "little")
    built = hcl_report_bytes(genuine_hcl[32:1216], genuine_hcl[1236 : 1236 + claims_size])
    assert built == genuine_hcl[:report_size]
    assert not any(genuine_hcl[report_size:])  # the rest of the 2600-byte index is zero padding


def test_the_runtime_claims_are_serialized_as_the_genuine_ones(genuine_hcl) -> None:
    claims_size = int.from_bytes(genuine_hcl[1232:1236], "little")
    genuine = json.loads(genuine_hcl[1236 : 1236 + claims_size])
    keys = VtpmKeys(*(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key() for _ in range(2)))
    built = runtime_claims(keys, "BDD43C6F-0B79-4D3F-BE6A-C594AF3BAF6E", bytes(range(64)))
    claims = json.loads(built)
    assert built == json.dumps(claims, separators=(",", ":")).encode()  # compact, as the paravisor writes it
    assert list(claims) == list(genuine)
    assert [list(key) for key in claims["keys"]] == [list(key) for key in genuine["keys"]]
    assert [(key["kid"], key["key_ops"], key["e"]) for key in claims["keys"]] == [
        (key["kid"], key["key_ops"], key["e"]) for key in genuine["keys"]
    ]
    assert list(claims["vm-configuration"]) == list(genuine["vm-configuration"])
    assert claims["user-data"] == bytes(range(64)).hex().upper()
    assert claims["keys"][0]["n"] == base64.urlsafe_b64encode(
        keys.ak.public_numbers().n.to_bytes(256, "big")).rstrip(b"=").decode()  # fmt: skip


def test_tpm2_tools_reads_the_event_log_and_replays_it(tmp_path) -> None:
    measurement = hashlib.sha256(b"a workload").digest()
    log = TcgEventLog(["sha1", "sha256"])
    digests = log.record(WORKLOAD_PCR, EV_EVENT_TAG, workload_event(measurement), measurement)
    path = tmp_path / "binary_bios_measurements"
    path.write_bytes(log.to_bytes())
    result = subprocess.run(["tpm2_eventlog", str(path)], capture_output=True, text=True, check=True)
    assert not result.stderr, result.stderr
    parsed = yaml.safe_load(result.stdout)
    header, event = parsed["events"]
    assert header["EventType"] == "EV_NO_ACTION" and header["SpecID"][0]["Signature"] == "Spec ID Event03"
    assert (event["PCRIndex"], event["EventType"]) == (WORKLOAD_PCR, "EV_EVENT_TAG")
    assert struct.unpack_from("<II", bytes.fromhex(event["Event"])) == (WORKLOAD_EVENT_TAG, 32)
    for bank, size in (("sha1", 20), ("sha256", 32)):
        expected = hashlib.new(bank, bytes(size) + digests[bank]).digest()
        assert parsed["pcrs"][bank][WORKLOAD_PCR].to_bytes(size, "big") == expected


def test_an_event_log_for_an_unknown_bank_is_refused() -> None:
    with pytest.raises(ValueError, match="sm3"):
        TcgEventLog(["sha256", "sm3_256"])


@pytest.fixture(scope="module")
def imds(tmp_path_factory) -> tuple[TestClient, SimulatedSnpPlatform]:
    platform_dir = tmp_path_factory.mktemp("snp-platform")
    platform = SimulatedSnpPlatform.load_or_create(platform_dir)
    return TestClient(create_app(ImdsConfig(snp_platform_dir=platform_dir))), platform


def test_thim_serves_the_vcek_chain_of_the_reports_tcb(imds) -> None:
    client, platform = imds
    answer = client.get(THIM_PATH, headers={"Metadata": "true"}).json()
    assert set(answer) == {"vcekCert", "tcbm", "certificateChain"}
    chain = CertificateChain.from_pem_bundle((answer["vcekCert"] + answer["certificateChain"]).encode())
    assert chain == platform.certificate_chain(DEFAULT_TCB)
    # tcbm: the TCB_VERSION as a little-endian 64-bit number in hex (microcode 115, SNP 8, TEE 0, bootloader 3).
    assert answer["tcbm"] == "7308000000000003"


def test_the_image_reference_is_the_local_cvms(imds) -> None:
    client, _ = imds
    answer = client.get(IMAGE_REFERENCE_PATH, params={"api-version": IMDS_API_VERSION}, headers={"Metadata": "true"})
    assert answer.json() == LOCAL_IMAGE_REFERENCE


@pytest.mark.parametrize(
    ("path", "params", "headers"),
    [
        (THIM_PATH, {}, {}),
        (THIM_PATH, {}, {"Metadata": "false"}),
        (IMAGE_REFERENCE_PATH, {}, {"Metadata": "true"}),
    ],
)
def test_imds_refuses_requests_without_its_header_or_api_version(imds, path, params, headers) -> None:
    client, _ = imds
    answer = client.get(path, params=params, headers=headers)
    assert answer.status_code == 400 and "Bad request" in answer.json()["error"]
