"""The attestation stand-in's NRAS-style GPU endpoint: the genuine H100 report earns tokens with NVIDIA's claim
names; a simulated GPU only where its root is configured; another nonce, a changed byte or a malformed body are
refused naming the check."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from fastapi.testclient import TestClient

from securetrain.core.attestation.tokens import ES384, published_key
from securetrain.core.nvidia.binding import gpu_nonce
from securetrain.core.nvidia.reference import ReferenceMeasurements
from securetrain.core.nvidia.spdm import GpuAttestationReport
from securetrain.localstack.platform.simulated_gpu import SimulatedH100
from securetrain.localstack.standins.attestation_service.app import ServiceConfig, create_app
from securetrain.localstack.standins.attestation_service.gpu_attestation import GpuVerifierConfig

H100 = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "nvidia-h100"
REPORT = bytes.fromhex(H100.joinpath("hopperAttestationReport.txt").read_text().strip())
CHAIN_PEM = H100.joinpath("hopper_cert_chain_case1.txt").read_bytes()
NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
ISSUER = "https://attestation.securetrain.test"
URL = "/v4/attest/gpu"


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> SimulatedH100:
    return SimulatedH100.load_or_create(tmp_path_factory.mktemp("gpu") / "h100")


def service(state_dir: Path, gpu_config: GpuVerifierConfig = GpuVerifierConfig()) -> TestClient:
    config = ServiceConfig(
        issuer=ISSUER, state_dir=state_dir, additional_roots=(), identity_authority="https://identity.invalid/tenant",
        identity_issuer="https://sts.windows.net/tenant/", ca_bundle=state_dir / "ca.pem",
        roles_file=state_dir / "roles.json", gpu=gpu_config,
    )  # fmt: skip
    return TestClient(create_app(config))


def body(report: bytes = REPORT, chain: bytes = CHAIN_PEM, nonce: str = NONCE) -> dict:
    evidence = {"evidence": base64.b64encode(report).decode(), "certificate": base64.b64encode(chain).decode()}
    return {"nonce": nonce, "arch": "HOPPER", "claims_version": "3.0", "evidence_list": [evidence]}


def decode(client: TestClient, token: str) -> dict:
    """The claims of ``token`` verified as NVIDIA's SDK verifies NRAS's: ES384 by ``x5c[0]`` of the JWKS key named."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES384" and set(header) == {"alg", "kid", "typ"}
    keys = {k["kid"]: k for k in client.get("/.well-known/jwks.json").json()["keys"]}
    assert header["kid"] not in {k["kid"] for k in client.get("/certs").json()["keys"]}  # MAA's keys are apart
    published = keys[header["kid"]]
    assert (published["kty"], published["crv"], published["alg"]) == ("EC", "P-384", "ES384")
    key = x509.load_der_x509_certificate(base64.b64decode(published["x5c"][0])).public_key()
    assert published_key(published, ES384).public_numbers() == key.public_numbers()  # x/y name the same key
    return jwt.decode(token, key, algorithms=["ES384"], issuer=ISSUER)


def test_genuine_report_earns_nras_shaped_tokens(tmp_path: Path) -> None:
    client = service(tmp_path)
    response = client.post(URL, json=body())
    assert response.status_code == 200, response.text
    (kind, overall_token), detached_tokens = response.json()
    assert kind == "JWT"
    overall = decode(client, overall_token)
    detached = decode(client, detached_tokens["GPU-0"])
    assert detached["x-nvidia-gpu-arch-check"] is True
    assert detached["x-nvidia-gpu-attestation-report-signature-verified"] is True
    assert detached["x-nvidia-gpu-driver-version"] == "550.90.07"
    assert detached["hwmodel"] == "GH100 A01 GSP BROM"
    assert detached["eat_nonce"] == NONCE
    assert detached["x-securetrain-platform"] == "nvidia-gpu"
    # Without reference measurements nothing was compared: no measres, and the overall result is false.
    assert "measres" not in detached
    assert overall["x-nvidia-overall-att-result"] is False
    assert overall["submods"]["GPU-0"] == ["DIGEST", ["SHA256", hashlib.sha256(detached_tokens["GPU-0"].encode()).hexdigest()]]


def test_matching_reference_measurements_make_the_overall_result_true(tmp_path: Path) -> None:
    measurements = GpuAttestationReport.from_bytes(REPORT).response.measurements()
    reference = ReferenceMeasurements("test RIM", {index: frozenset({measurements[index]}) for index in (2, 3, 4)})
    client = service(tmp_path, GpuVerifierConfig(reference=reference))
    (_, overall_token), detached_tokens = client.post(URL, json=body()).json()
    assert decode(client, detached_tokens["GPU-0"])["measres"] == "success"
    assert decode(client, overall_token)["x-nvidia-overall-att-result"] is True


def test_measurements_off_the_reference_are_refused(tmp_path: Path) -> None:
    reference = ReferenceMeasurements("test RIM", {2: frozenset({bytes(48)})})
    response = service(tmp_path, GpuVerifierConfig(reference=reference)).post(URL, json=body())
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MeasurementMismatch"


@pytest.mark.parametrize(
    ("request_body", "code"),
    [
        pytest.param(body(nonce="00" * 32), "GpuNonceMismatch", id="other-nonce"),
        pytest.param(body(report=REPORT[:-1] + bytes([REPORT[-1] ^ 1])), "GpuReportSignatureInvalid", id="changed-byte"),
        pytest.param(body(report=REPORT[:-5]), "SpdmFormatError", id="truncated"),
        pytest.param({**body(), "arch": "BLACKWELL"}, "InvalidParameter", id="other-arch"),
        pytest.param({**body(), "evidence_list": []}, "InvalidParameter", id="no-evidence"),
        pytest.param({**body(), "nonce": "xyz"}, "InvalidParameter", id="malformed-nonce"),
    ],
)
def test_refusals_name_the_check(tmp_path: Path, request_body: dict, code: str) -> None:
    response = service(tmp_path).post(URL, json=request_body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_simulated_gpu_needs_its_root_configured(tmp_path: Path, gpu: SimulatedH100) -> None:
    nonce = gpu_nonce(b'{"nonce":"job-1"}')
    evidence = gpu.report(nonce)
    request_body = body(evidence.report, evidence.chain.to_pem(), nonce.hex())
    refused = service(tmp_path / "default").post(URL, json=request_body)
    assert refused.json()["error"]["code"] == "UntrustedGpuRoot"
    client = service(tmp_path / "configured", GpuVerifierConfig(additional_roots=(gpu.root,)))
    (_, overall_token), detached_tokens = client.post(URL, json=request_body).json()
    assert decode(client, overall_token)["x-securetrain-platform"] == "simulated"
    assert decode(client, detached_tokens["GPU-0"])["eat_nonce"] == nonce.hex()
