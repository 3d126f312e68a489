"""GPU attestation as NVIDIA's Remote Attestation Service (NRAS) documents it, served beside the MAA stand-in.

Microsoft Azure Attestation has no attestation type for GPU evidence; on Azure's NCCads H100 v5 confidential VMs
the GPU is attested with NVIDIA's tooling — its local verifier in the guest, or NRAS — beside MAA's attestation
of the CPU (docs/attestation.md, "GPU evidence"). This module therefore models NRAS, not MAA:

    POST /v4/attest/gpu   {"nonce": hex(32 bytes), "arch": "HOPPER", "claims_version": "3.0",
                           "evidence_list": [{"evidence": base64(report), "certificate": base64(PEM chain)}, ...]}
         200 [["JWT", overall token], {"GPU-0": detached token, ...}]  |  400 {"error": {"code", "message"}}

the request and answer shapes of NVIDIA's attestation SDK (github.com/NVIDIA/nvtrust,
``attest_gpu_remote.build_payload`` and the unified EAT it parses). Each GPU's report is verified by
:func:`securetrain.core.nvidia.verifier.verify_gpu_report` against NVIDIA's root and the GPU roots this service's
configuration adds (the local stack's simulated H100), with the request's nonce and, where configured, reference
measurements; its detached token carries :func:`securetrain.core.nvidia.claims.gpu_claims`, and the overall
token ``x-nvidia-overall-att-result`` (true only when every GPU is a Hopper whose measurements matched),
``submods`` (each detached token's SHA-256) and ``eat_nonce``.

How this differs from NRAS: tokens are signed RS256 by the stand-in's key (NRAS signs ES384 with NVIDIA's),
revocation is not checked (NRAS asks NVIDIA's OCSP responder), and reference measurements are this service's
configuration rather than RIMs fetched from NVIDIA's RIM service. Every token says ``x-securetrain-platform``:
``simulated`` when any GPU's root is not NVIDIA's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography import x509
from pydantic import Field

from securetrain.core.errors import ConfigurationError
from securetrain.core.json_input import JsonInputError, read_json_object
from securetrain.core.nvidia.certs import GpuCertificateChain, spki_sha256
from securetrain.core.nvidia.claims import gpu_claims
from securetrain.core.nvidia.reference import ReferenceMeasurements
from securetrain.core.nvidia.roots import NVIDIA_DEVICE_ROOTS, DeviceRoot
from securetrain.core.nvidia.verifier import verify_gpu_report
from securetrain.localstack.standins.attestation_service.evidence import EvidenceRefused
from securetrain.localstack.standins.request_body import BodyInvalid, RequestBody

MAX_GPU_BODY_BYTES = 256 << 10
MAX_GPUS = 8
CLAIMS_VERSION = "3.0"


class GpuEvidenceItem(RequestBody):
    """One GPU's evidence: its attestation report and its device certificate chain (PEM), each base64."""

    evidence: str
    certificate: str


class AttestGpuRequest(RequestBody):
    """NRAS's GPU attestation request."""

    nonce: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
    arch: Literal["HOPPER"]
    evidence_list: Annotated[list[GpuEvidenceItem], Field(min_length=1, max_length=MAX_GPUS)]
    claims_version: str = CLAIMS_VERSION


@dataclass(frozen=True)
class GpuVerifierConfig:
    """Which device roots GPU evidence may chain to besides NVIDIA's, and the reference measurements, if any."""

    additional_roots: tuple[DeviceRoot, ...] = ()
    reference: ReferenceMeasurements | None = None

    @property
    def trusted_roots(self) -> tuple[DeviceRoot, ...]:
        """NVIDIA's root, always, and the configured ones."""
        return (*NVIDIA_DEVICE_ROOTS, *self.additional_roots)


@dataclass(frozen=True)
class AttestedGpus:
    """The claims of the overall token and of each GPU's detached token, and what the decision log keeps."""

    overall: Mapping[str, Any]
    detached: Mapping[str, Mapping[str, Any]]
    log_fields: Mapping[str, Any]


def attest_gpus(body: bytes, config: GpuVerifierConfig) -> AttestedGpus:
    """Verify every GPU of the request; :class:`EvidenceRefused` or the verifier's error naming the check if any fails."""
    try:
        request = AttestGpuRequest.parse(read_json_object(body, max_bytes=MAX_GPU_BODY_BYTES, what="request body"))
    except JsonInputError as exc:
        raise EvidenceRefused("InvalidParameter", str(exc)) from None
    except BodyInvalid as exc:
        raise EvidenceRefused("InvalidParameter", f"request body: {exc.field}: {exc.reason}") from None
    nonce = bytes.fromhex(request.nonce)
    detached: dict[str, dict[str, Any]] = {}
    simulated = False
    for position, item in enumerate(request.evidence_list):
        name = f"GPU-{position}"
        verified = verify_gpu_report(
            _base64(item.evidence, f"{name} evidence"),
            GpuCertificateChain.from_pem(_base64(item.certificate, f"{name} certificate")),
            config.trusted_roots,
            expected_nonce=nonce,
            reference=config.reference,
        )
        simulated = simulated or verified.simulated
        detached[name] = gpu_claims(verified)
    platform = "simulated" if simulated else "nvidia-gpu"
    for claims in detached.values():
        claims["x-securetrain-platform"] = platform
    overall = {
        "x-nvidia-ver": "2.0",
        "x-nvidia-overall-att-result": all(
            claims["x-nvidia-gpu-arch-check"] and claims.get("measres") == "success" for claims in detached.values()
        ),
        "eat_nonce": request.nonce.lower(),
        "x-securetrain-platform": platform,
    }
    logged = {"gpus": len(detached), "measurements_compared": config.reference is not None}
    return AttestedGpus(overall, detached, logged)


def submods(detached_tokens: Mapping[str, str]) -> dict[str, list[Any]]:
    """The overall token's ``submods``: each GPU's detached token by its SHA-256, as NRAS binds them."""
    return {
        name: ["DIGEST", ["SHA256", hashlib.sha256(token.encode()).hexdigest()]] for name, token in detached_tokens.items()
    }


def _base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceRefused("InvalidParameter", f"{field} is not valid base64") from None


def trusted_gpu_root(path: Path) -> DeviceRoot:
    """The root certificate in ``path`` (PEM) as a root GPU evidence may chain to, named by its subject."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the GPU root certificate {path}: {exc}") from None
    return DeviceRoot(certificate.subject.rfc4514_string(), spki_sha256(certificate))


def reference_measurements(path: Path) -> ReferenceMeasurements:
    """Reference measurements from a JSON file (:meth:`ReferenceMeasurements.from_dict`'s form)."""
    try:
        document = read_json_object(path.read_bytes(), max_bytes=MAX_GPU_BODY_BYTES, what=str(path))
    except (OSError, JsonInputError) as exc:
        raise ConfigurationError(f"cannot read the GPU reference measurements {path}: {exc}") from None
    return ReferenceMeasurements.from_dict(document)
