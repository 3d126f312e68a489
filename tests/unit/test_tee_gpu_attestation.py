"""The TEE's checks of a GPU attestation service's answer: every token signed by the pinned issuer and unexpired,
bound to the overall token, for the nonce derived from this attestation's runtime data, every check confirmed and
the measurements matched where required; anything else is refused naming the check. The service's answers here are
signed locally; tests/integration/test_gpu_attestation_stack.py runs the same path through the stack's services."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from securetrain.core.attestation.tokens import ES384, TokenValidator
from securetrain.core.errors import ConfigurationError
from securetrain.core.nvidia.binding import gpu_nonce
from securetrain.tee.agent.__main__ import gpu_evidence_provider
from securetrain.tee.agent.health import gpu_attestation_status
from securetrain.tee.evidence.nvidia_gpu import GpuEvidence
from securetrain.tee.gpu_attestation import VERIFICATION_CLAIMS, GpuAttestationRefused, GpuAttester, GpuRequirement
from securetrain.tee.settings import GpuSettings
from securetrain.tee.workload import host_data, manifest

ISSUER = "https://nras.example.test"
RUNTIME_DATA = b'{"keys":[],"nonce":"job-nonce"}'
JWKS = ISSUER + "/.well-known/jwks.json"
SERVICE_KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_KEY = ec.generate_private_key(ec.SECP384R1())


class PinnedIssuer:
    """The pinned issuer's published keys, as AuthorityKeys serves them to the validator: NRAS's, ES384."""

    issuer = ISSUER
    algorithm = ES384

    def key(self, kid: str) -> ec.EllipticCurvePublicKey:
        return SERVICE_KEY.public_key()


class Gpu:
    gpu_type = "nvidia-h100-cc"

    def gpu_evidence(self, runtime_data: bytes) -> GpuEvidence:
        return GpuEvidence(b"report for " + gpu_nonce(runtime_data), b"chain")


def _sign(claims: dict[str, Any], key: ec.EllipticCurvePrivateKey = SERVICE_KEY) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "iat": now, "nbf": now, "exp": now + 600, **claims}, key, algorithm="ES384",
                      headers={"kid": "k1"})  # fmt: skip


class Service:
    """An NRAS-style answer for the nonce asked, with ``change`` applied to (overall claims, detached claims)."""

    def __init__(self, change: Callable[[dict, dict], None] = lambda overall, detached: None, *,
                 sign_detached: Callable[[dict], str] = _sign, shape: Callable[[list], Any] = lambda answer: answer):  # fmt: skip
        self._change, self._sign_detached, self._shape = change, sign_detached, shape

    def attest(self, nonce: bytes, evidence: GpuEvidence) -> Any:
        assert evidence.report.endswith(nonce)
        detached = {"hwmodel": "GH100 A01 GSP BROM", "ueid": "1", "measres": "success", "eat_nonce": nonce.hex(),
                    **dict.fromkeys(VERIFICATION_CLAIMS, True)}  # fmt: skip
        overall: dict[str, Any] = {"x-nvidia-overall-att-result": True, "eat_nonce": nonce.hex()}
        self._change(overall, detached)
        token = self._sign_detached(detached)
        overall.setdefault("submods", {"GPU-0": ["DIGEST", ["SHA256", hashlib.sha256(token.encode()).hexdigest()]]})
        return self._shape([["JWT", _sign(overall)], {"GPU-0": token}])


def attester(service: Service, *, provider: str = "nvml", require_measurements: bool = True) -> GpuAttester:
    requirement = GpuRequirement(provider, ISSUER, ISSUER, JWKS, require_measurements)
    return GpuAttester(Gpu(), service, TokenValidator(PinnedIssuer()), requirement)  # type: ignore[arg-type]


def test_a_verified_gpu_yields_the_claims_relied_on() -> None:
    attested = attester(Service()).attest(RUNTIME_DATA)
    assert attested.cc_mode == "on" and attested.gpus["GPU-0"]["measres"] == "success"
    summary = attested.summary()
    assert summary["gpu_type"] == "nvidia-h100-cc" and "eat_nonce" not in summary["gpus"]["GPU-0"]
    status = gpu_attestation_status("nvidia-h100-cc", attested)
    assert status.verified and status.cc_mode == "on" and status.gpus == ["GH100 A01 GSP BROM"]
    assert not gpu_attestation_status("nvidia-h100-cc", None).verified
    assert gpu_attestation_status(None, None) is None


def _set(target: str, claim: str, value: Any) -> Callable[[dict, dict], None]:
    def change(overall: dict, detached: dict) -> None:
        claims = overall if target == "overall" else detached
        if value is None:
            claims.pop(claim, None)
        else:
            claims[claim] = value

    return change


@pytest.mark.parametrize(("change", "check"), [
    (_set("overall", "eat_nonce", "00" * 32), "nonce"),
    (_set("detached", "eat_nonce", "00" * 32), "nonce"),
    (_set("detached", "x-nvidia-gpu-attestation-report-signature-verified", False), "verification"),
    (_set("detached", "x-nvidia-gpu-attestation-report-cert-chain-validated", None), "verification"),
    (_set("detached", "measres", None), "measurements"),
    (_set("overall", "x-nvidia-overall-att-result", False), "measurements"),
    (_set("detached", "x-securetrain-platform", "simulated"), "platform"),
    (_set("overall", "submods", {"GPU-0": ["DIGEST", ["SHA256", "00" * 32]]}), "submods"),
    (_set("overall", "submods", {}), "submods"),
])  # fmt: skip
def test_an_answer_failing_a_check_is_refused_naming_it(change, check: str) -> None:
    with pytest.raises(GpuAttestationRefused, match=rf"\({check}\)") as refused:
        attester(Service(change)).attest(RUNTIME_DATA)
    assert refused.value.check == check


def test_measurements_are_only_required_where_configured() -> None:
    attested = attester(Service(_set("detached", "measres", None)), require_measurements=False).attest(RUNTIME_DATA)
    assert "measres" not in attested.gpus["GPU-0"]


@pytest.mark.parametrize("sign_detached", [
    lambda claims: _sign(claims, OTHER_KEY),
    lambda claims: _sign({**claims, "exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}),
])  # fmt: skip
def test_a_token_the_tee_cannot_verify_is_refused(sign_detached) -> None:
    with pytest.raises(GpuAttestationRefused, match=r"\(token\)"):
        attester(Service(sign_detached=sign_detached)).attest(RUNTIME_DATA)


@pytest.mark.parametrize("shape", [lambda answer: {"token": answer}, lambda answer: [answer[0], {}], lambda answer: answer[:1]])
def test_an_answer_of_another_shape_is_refused(shape) -> None:
    with pytest.raises(GpuAttestationRefused, match=r"\(answer\)"):
        attester(Service(shape=shape)).attest(RUNTIME_DATA)


def test_the_gpu_requirement_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GpuSettings.load().gpu_requirement() is None
    monkeypatch.setenv("SECURETRAIN_GPU", "nvml")
    with pytest.raises(ConfigurationError, match="SECURETRAIN_GPU_ATTESTATION_ENDPOINT"):
        GpuSettings.load().gpu_requirement()
    monkeypatch.setenv("SECURETRAIN_GPU_ATTESTATION_ENDPOINT", ISSUER + "/")
    configured = GpuSettings.load().gpu_configuration()
    assert configured == {"provider": "nvml", "attestation_endpoint": ISSUER, "token_issuer": ISSUER,
                          "token_jwks": JWKS, "require_measurements": True}  # fmt: skip
    monkeypatch.setenv("SECURETRAIN_GPU_TOKEN_JWKS", "https://keys.example.test/jwks.json")
    pinned = GpuSettings.load().gpu_requirement().token_keys(True)
    assert (pinned.issuer, pinned.algorithm, pinned.jwks_url) == (ISSUER, ES384, "https://keys.example.test/jwks.json")
    assert manifest(gpu=configured)["configuration"]["gpu"] == configured
    assert manifest()["configuration"]["gpu"] == {"provider": "none"}
    assert host_data(gpu=configured) != host_data() != host_data(gpu={**configured, "require_measurements": False})
    assert host_data(gpu=configured) != host_data(gpu={**configured, "token_jwks": "https://keys.example.test/jwks.json"})


def test_an_unknown_gpu_provider_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURETRAIN_GPU", "quantum")
    with pytest.raises(ConfigurationError, match="none, nvml"):
        gpu_evidence_provider(GpuSettings.load(), {"nvml": lambda settings: Gpu()})  # type: ignore[arg-type]
