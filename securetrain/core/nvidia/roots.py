"""Trust anchors for NVIDIA GPU evidence: which device-identity root a GPU's certificate chain may end in.

As for SEV-SNP (:mod:`securetrain.core.snp.roots`), a root is named by the SHA-256 of its SubjectPublicKeyInfo,
and which roots are trusted is always the verifier's configuration — never the chain the evidence brings,
whose last certificate is only compared with it. :data:`NVIDIA_DEVICE_ROOTS` lists NVIDIA's published root;
the local stack's attestation service adds its simulated GPU's root explicitly. Whether a root is NVIDIA's is a
fact, not a setting: evidence under any other root is reported as simulated, however it came to be trusted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from securetrain.core.errors import ConfigurationError


@dataclass(frozen=True)
class DeviceRoot:
    """A device-identity root a GPU's chain may end in: a name for messages and its key's SHA-256."""

    name: str
    spki_sha256: bytes

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a trusted GPU root needs a name")
        if len(self.spki_sha256) != hashlib.sha256().digest_size:
            raise ConfigurationError(f"trusted GPU root {self.name!r}: spki_sha256 must be 32 bytes")

    @property
    def simulated(self) -> bool:
        """True unless this is NVIDIA's published root: evidence under it is not from NVIDIA hardware."""
        return self.spki_sha256 not in _NVIDIA_ROOT_KEYS

    def to_dict(self) -> dict[str, object]:
        """Name, key digest (hex) and whether it is simulated."""
        return {"name": self.name, "spki_sha256": self.spki_sha256.hex(), "simulated": self.simulated}


# SHA-256 of the SubjectPublicKeyInfo of "CN=NVIDIA Device Identity CA, O=NVIDIA" (ECDSA P-384, self-signed,
# valid 2021-11-05 to 9999-12-31), the root NVIDIA ships with its local GPU verifier
# (github.com/NVIDIA/nvtrust, local_gpu_verifier/src/verifier/certs/verifier_device_root.pem) and the one the
# genuine H100 chain in ../shared/testdata/nvidia-h100/ ends in; the unit tests check both.
NVIDIA_DEVICE_ROOTS: tuple[DeviceRoot, ...] = (
    DeviceRoot(
        "NVIDIA Device Identity CA",
        bytes.fromhex("a90c4eb5acfd3e3d03a25db6a26b84f720ad0503196c627c21ddd48dd85b06a4"),
    ),
)

_NVIDIA_ROOT_KEYS = frozenset(root.spki_sha256 for root in NVIDIA_DEVICE_ROOTS)
