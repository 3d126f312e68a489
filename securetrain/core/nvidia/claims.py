"""The claims a verified GPU report earns, in the names NVIDIA's Remote Attestation Service (NRAS) gives them.

NRAS answers GPU evidence with an EAT: an overall JWT and, per GPU, a detached JWT whose claims are listed in
NVIDIA's claims guide (docs.nvidia.com/attestation, "Claims Guide: GPU Claims") and in NVIDIA's local verifier
(github.com/NVIDIA/nvtrust). :func:`gpu_claims` writes the detached token's claims for a report that
:func:`~securetrain.core.nvidia.verifier.verify_gpu_report` accepted; since that function refuses every report
that fails a check, each check's claim is ``true`` — a refused report earns no claims at all.

- ``x-nvidia-gpu-arch-check``: the device certificate is a Hopper (GH100) one;
- ``x-nvidia-gpu-attestation-report-parsed``, ``-signature-verified``, ``-nonce-match``, ``-cert-chain-validated``,
  ``-cert-chain-fwid-match``: the checks of :mod:`securetrain.core.nvidia.verifier`;
- ``measres``: ``success`` when the measurements were compared with reference values and matched; absent when
  no reference values were configured, so a policy requiring it refuses an uncompared report;
- ``x-nvidia-gpu-driver-version``, ``x-nvidia-gpu-vbios-version``: from the signed opaque data;
- ``hwmodel`` (the device certificate's common name) and ``ueid`` (the attestation key certificate's serial
  number, decimal), as NRAS writes them; ``eat_nonce``: the nonce the report answers (hex).

Revocation (``x-nvidia-cert-status`` and friends, from NVIDIA's OCSP responder) is not claimed: it is not checked.
"""

from __future__ import annotations

from typing import Any

from cryptography.x509.oid import NameOID

from securetrain.core.nvidia.verifier import VerifiedGpuReport

HOPPER_MODEL_PREFIX = "GH100"
#: Where NRAS publishes the keys that sign its tokens (a JWKS on the service's own origin; it has no OpenID
#: metadata), and the one algorithm it signs them with: NVIDIA's SDKs fetch that path and verify ES384 only.
NRAS_JWKS_PATH = "/.well-known/jwks.json"
NRAS_TOKEN_ALGORITHM = "ES384"
_DEVICE_CERTIFICATE = 1  # the BROM certificate: the GPU itself, as NRAS's hwmodel names it


def gpu_claims(verified: VerifiedGpuReport) -> dict[str, Any]:
    """The detached-EAT claims of one verified GPU report."""
    device = verified.chain.certificates[_DEVICE_CERTIFICATE]
    names = device.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    hwmodel = str(names[0].value) if names else ""
    opaque = verified.report.response.opaque
    claims: dict[str, Any] = {
        "x-nvidia-gpu-arch-check": hwmodel.startswith(HOPPER_MODEL_PREFIX),
        "x-nvidia-gpu-attestation-report-parsed": True,
        "x-nvidia-gpu-attestation-report-signature-verified": True,
        "x-nvidia-gpu-attestation-report-nonce-match": True,
        "x-nvidia-gpu-attestation-report-cert-chain-validated": True,
        "x-nvidia-gpu-attestation-report-cert-chain-fwid-match": True,
        "x-nvidia-gpu-driver-version": opaque.driver_version,
        "x-nvidia-gpu-vbios-version": opaque.vbios_version,
        "hwmodel": hwmodel,
        "ueid": str(verified.chain.leaf.serial_number),
        "eat_nonce": verified.report.nonce.hex(),
    }
    if verified.reference is not None:
        claims["measres"] = "success"
    return claims
