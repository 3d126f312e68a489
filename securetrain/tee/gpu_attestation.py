"""Attesting the TEE's GPU beside its CPU: evidence for the nonce the CPU evidence binds, appraised by an
NRAS-style service, and the service's token checked by the TEE before any key is asked for.

When the TEE's measured configuration names a GPU (:class:`GpuRequirement`, from ``SECURETRAIN_GPU``), every
attestation of a job (:class:`securetrain.tee.attest.Attester`) also runs :meth:`GpuAttester.attest` on the
runtime data its CPU evidence binds:

1. the GPU nonce is derived from that runtime data (:func:`securetrain.core.nvidia.binding.gpu_nonce`) and the
   GPU's provider collects a report for it (NVML, refusing a GPU whose confidential-computing mode is off);
2. the report and its device chain go to the GPU attestation service (``POST /v4/attest/gpu``, NVIDIA NRAS's
   request shape), which verifies the chain against its roots, the signature, the nonce and the measurements;
3. the service's answer, an overall token and one detached token per GPU, is checked here: each signature
   (ES384 only, NRAS's algorithm) against the P-384 keys published in the pinned JWKS (NRAS's
   ``/.well-known/jwks.json``: NRAS has no OpenID metadata), the pinned issuer, expiry, every detached
   token bound to the overall one (``submods``), ``eat_nonce`` equal to the nonce derived in step 1, the
   service's verification claims all true, and — where the requirement says so — ``measres`` ``success`` and
   the overall result true.

Any refusal is :class:`GpuAttestationRefused` naming the check; the attestation, and with it the job, stops before
Secure Key Release. The claims relied on (:class:`GpuAttestation`) go into the job's TEE event log and the
agent's health.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import requests

from securetrain.core.attestation.tokens import AuthorityKeys, AuthorityUnreachable, TokenRejected, TokenValidator
from securetrain.core.errors import SecurityViolation
from securetrain.core.http import HttpsSession
from securetrain.core.nvidia.binding import gpu_nonce
from securetrain.core.nvidia.claims import NRAS_JWKS_PATH, NRAS_TOKEN_ALGORITHM
from securetrain.tee.evidence.nvidia_gpu import GpuEvidence, GpuEvidenceProvider

log = logging.getLogger(__name__)

GPU_ATTEST_PATH = "/v4/attest/gpu"


def default_token_jwks(attestation_endpoint: str) -> str:
    """Where NRAS publishes its token keys, on the endpoint's origin (how NVIDIA's attestation SDK finds them)."""
    return "/".join(attestation_endpoint.split("/", 3)[:3]) + NRAS_JWKS_PATH

GPU_ARCH = "HOPPER"
CLAIMS_VERSION = "3.0"
#: The detached-token claims in which the service states that each of its checks passed (NVIDIA's names).
VERIFICATION_CLAIMS = (
    "x-nvidia-gpu-arch-check",
    "x-nvidia-gpu-attestation-report-parsed",
    "x-nvidia-gpu-attestation-report-signature-verified",
    "x-nvidia-gpu-attestation-report-nonce-match",
    "x-nvidia-gpu-attestation-report-cert-chain-validated",
    "x-nvidia-gpu-attestation-report-cert-chain-fwid-match",
)
#: What a refusal names: where in the path the GPU's attestation stopped.
CHECKS = ("service", "answer", "token", "submods", "nonce", "verification", "measurements", "platform")
_SIMULATED = "simulated"
#: The gpu_type of the local stack's simulated H100 (:class:`securetrain.localstack.platform.simulated_evidence.SimulatedGpuProvider`).
SIMULATED_GPU_TYPE = "nvidia-h100-simulated"
_PLATFORM_CLAIM = "x-securetrain-platform"


class GpuAttestationRefused(SecurityViolation):
    """The GPU's attestation did not pass ``check`` (one of :data:`CHECKS`): no key is asked for."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"GPU attestation refused ({check}): {message}")
        self.check = check


@dataclass(frozen=True)
class GpuRequirement:
    """What the TEE requires of its GPU before any key: part of the measured configuration (HOST_DATA).

    ``provider`` is the GPU evidence provider (``nvml``, or ``simulated`` on the local stack); the service at
    ``attestation_endpoint`` appraises the evidence; its tokens must name ``token_issuer`` as ``iss`` and be
    signed ES384 by a key the JWKS at ``token_jwks`` publishes; ``require_measurements``: the GPU's measurements
    must have matched reference values.
    """

    provider: str
    attestation_endpoint: str
    token_issuer: str
    token_jwks: str
    require_measurements: bool = True

    def token_keys(self, verify: str | bool) -> AuthorityKeys:
        """The pinned authority of the GPU service's tokens: its issuer, its JWKS and NRAS's algorithm."""
        return AuthorityKeys(self.token_issuer, jwks_url=self.token_jwks, algorithm=NRAS_TOKEN_ALGORITHM, verify=verify)

    def measured(self) -> dict[str, Any]:
        """The requirement as the workload manifest's configuration records it."""
        return {
            "provider": self.provider, "attestation_endpoint": self.attestation_endpoint,
            "token_issuer": self.token_issuer, "token_jwks": self.token_jwks,
            "require_measurements": self.require_measurements,
        }  # fmt: skip


#: The manifest's GPU configuration of a TEE that requires no GPU.
NO_GPU: dict[str, Any] = {"provider": "none"}


@dataclass(frozen=True)
class GpuAttestation:
    """A GPU attestation the TEE verified and relied on: the service's overall token and the claims of each GPU."""

    gpu_type: str
    token: str
    gpus: Mapping[str, Mapping[str, Any]]

    def summary(self) -> dict[str, Any]:
        """What the TEE event log and the agent's health record: the GPUs, their verified claims, the token."""
        return {"gpu_type": self.gpu_type, "cc_mode": self.cc_mode, "token": self.token,
                "gpus": {name: dict(claims) for name, claims in self.gpus.items()}}  # fmt: skip

    @property
    def cc_mode(self) -> Literal["on", "simulated"]:
        """``on``: the provider refused to give evidence unless NVML confirmed confidential-computing mode (production,
        no developer tools); the local stack's simulated H100 has no such mode."""
        return "simulated" if self.gpu_type == SIMULATED_GPU_TYPE else "on"


class GpuAttestationClient:
    """A client of one NRAS-style GPU attestation service over verified TLS; answers are returned unchecked."""

    def __init__(self, endpoint: str, *, verify: str | bool = True, timeout: float = 30.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._timeout = timeout
        self._session = HttpsSession(verify, resend=False)

    def attest(self, nonce: bytes, evidence: GpuEvidence) -> Any:
        url = self.endpoint + GPU_ATTEST_PATH
        body = {
            "nonce": nonce.hex(), "arch": GPU_ARCH, "claims_version": CLAIMS_VERSION,
            "evidence_list": [{"evidence": base64.b64encode(evidence.report).decode(),
                               "certificate": base64.b64encode(evidence.certificate_chain_pem).decode()}],
        }  # fmt: skip
        try:
            response = self._session.post(url, json=body, timeout=self._timeout)
        except requests.exceptions.SSLError as exc:
            raise SecurityViolation(f"TLS verification of {url} failed: {exc}") from None
        except requests.RequestException as exc:
            raise AuthorityUnreachable(f"cannot reach the GPU attestation service at {url}: {exc}") from None
        if 400 <= response.status_code < 500:
            try:
                error = response.json()["error"]
                reason = f"{error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                reason = f"{response.status_code}: {response.text[:500]}"
            raise GpuAttestationRefused("service", f"{self.endpoint} refused the GPU evidence ({reason})")
        if response.status_code != 200:
            raise AuthorityUnreachable(f"GPU attestation service {url} failed with {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise GpuAttestationRefused("answer", f"{url} answered 200 with a body that is not JSON") from None


class GpuAttester:
    """GPU evidence from ``provider`` → the service ``client`` → its tokens checked with ``validator`` (the
    pinned issuer's keys) against ``requirement``."""

    def __init__(
        self, provider: GpuEvidenceProvider, client: GpuAttestationClient, validator: TokenValidator,
        requirement: GpuRequirement,
    ) -> None:  # fmt: skip
        self.provider = provider
        self._client = client
        self._validator = validator
        self.requirement = requirement

    def attest(self, runtime_data: bytes) -> GpuAttestation:
        """Attest the GPU for the CPU evidence binding ``runtime_data``; :class:`GpuAttestationRefused` if any check fails."""
        nonce = gpu_nonce(runtime_data)
        answer = self._client.attest(nonce, self.provider.gpu_evidence(runtime_data))
        overall_raw, detached_raw = _answer_tokens(answer)
        overall = self._validated(overall_raw, "the overall token")
        submods = overall.get("submods")
        if not isinstance(submods, Mapping) or set(submods) != set(detached_raw):
            raise GpuAttestationRefused("submods", "the overall token does not name exactly the GPUs the answer carries")
        gpus: dict[str, Mapping[str, Any]] = {}
        for name, raw in detached_raw.items():
            if submods[name] != ["DIGEST", ["SHA256", hashlib.sha256(raw.encode()).hexdigest()]]:
                raise GpuAttestationRefused("submods", f"{name}'s token is not the one the overall token binds")
            gpus[name] = self._check_gpu(name, self._validated(raw, f"{name}'s token"), nonce)
        self._check_nonce(overall, nonce)
        if self.requirement.require_measurements and overall.get("x-nvidia-overall-att-result") is not True:
            raise GpuAttestationRefused("measurements", "the service's overall attestation result is not true")
        log.info("GPU attested (%s): %s", self.provider.gpu_type, ", ".join(sorted(gpus)))
        return GpuAttestation(self.provider.gpu_type, overall_raw, gpus)

    def _validated(self, raw: str, what: str) -> dict[str, Any]:
        try:
            return dict(self._validator.validate(raw).claims)
        except TokenRejected as exc:
            raise GpuAttestationRefused("token", f"{what} cannot be verified: {exc}") from None

    def _check_nonce(self, claims: Mapping[str, Any], nonce: bytes) -> None:
        answered = claims.get("eat_nonce")
        if not isinstance(answered, str) or answered.lower() != nonce.hex():
            raise GpuAttestationRefused(
                "nonce", "the token answers another nonce than the one derived from this attestation's runtime data"
            )

    def _check_gpu(self, name: str, claims: Mapping[str, Any], nonce: bytes) -> dict[str, Any]:
        self._check_nonce(claims, nonce)
        failed = [claim for claim in VERIFICATION_CLAIMS if claims.get(claim) is not True]
        if failed:
            raise GpuAttestationRefused("verification", f"{name}: the service does not confirm {', '.join(failed)}")
        if self.requirement.require_measurements and claims.get("measres") != "success":
            raise GpuAttestationRefused("measurements", f"{name}'s measurements were not matched with reference values")
        if claims.get(_PLATFORM_CLAIM) == _SIMULATED and self.requirement.provider != _SIMULATED:
            raise GpuAttestationRefused("platform", f"{name} is a simulated GPU; this TEE requires a genuine one")
        kept = ("hwmodel", "ueid", "measres", "x-nvidia-gpu-driver-version", "x-nvidia-gpu-vbios-version", *VERIFICATION_CLAIMS)
        return {claim: claims[claim] for claim in kept if claim in claims}


def _answer_tokens(answer: Any) -> tuple[str, dict[str, str]]:
    """NRAS's answer ``[["JWT", overall], {"GPU-0": detached, ...}]`` as (overall, detached by GPU)."""
    if (
        isinstance(answer, list) and len(answer) == 2 and isinstance(answer[0], list) and len(answer[0]) == 2
        and answer[0][0] == "JWT" and isinstance(answer[0][1], str) and isinstance(answer[1], dict) and answer[1]
        and all(isinstance(name, str) and isinstance(token, str) for name, token in answer[1].items())
    ):  # fmt: skip
        return answer[0][1], dict(answer[1])
    raise GpuAttestationRefused("answer", "the GPU attestation service's answer is not an overall token and per-GPU tokens")
