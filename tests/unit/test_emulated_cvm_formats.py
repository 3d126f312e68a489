"""What the emulated Azure CVM writes, byte for byte: the TCG2 event log as tpm2-tools reads it, THIM's answer as IMDS
gives it. (Its HCL report and runtime claims are the core's, checked against the genuine report in test_azure_cvm_hcl.)"""

from __future__ import annotations

import hashlib
import struct
import subprocess

import pytest
import yaml
from fastapi.testclient import TestClient

from securetrain.core.snp.certs import CertificateChain
from securetrain.localstack.platform.measured_boot import (
    EV_EVENT_TAG,
    WORKLOAD_EVENT_TAG,
    WORKLOAD_PCR,
    TcgEventLog,
    workload_event,
)
from securetrain.localstack.platform.snp_platform import DEFAULT_TCB, SimulatedSnpPlatform
from securetrain.localstack.standins.imds.app import LOCAL_IMAGE_REFERENCE, ImdsConfig, create_app
from securetrain.tee.evidence.azure_cvm import IMAGE_REFERENCE_PATH, IMDS_API_VERSION, THIM_PATH


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
