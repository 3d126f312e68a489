"""Trust anchors for SEV-SNP evidence: which ARK (root key) a report's certificate chain may end in.

A root is named by the SHA-256 of its SubjectPublicKeyInfo rather than of its certificate, so that a
re-issued ARK certificate for the same key stays trusted and a look-alike certificate with another key
never is. Which roots are trusted is always the verifier's configuration: :data:`AMD_ROOTS`, plus whatever
root its operator adds explicitly (the local stack's attestation service adds its simulated platform's).

Whether a root is *genuine AMD* is a fact, not a setting: :data:`AMD_ROOTS` lists AMD's published
product roots, and any other root — the local stack's simulated platform above all — is reported as
simulated, so tokens it earns say so however it came to be trusted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from securetrain.core.errors import ConfigurationError


@dataclass(frozen=True)
class TrustedRoot:
    """An ARK that a certificate chain may end in: a name for messages and its key's SHA-256."""

    name: str
    spki_sha256: bytes

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a trusted root needs a name")
        if len(self.spki_sha256) != hashlib.sha256().digest_size:
            raise ConfigurationError(f"trusted root {self.name!r}: spki_sha256 must be 32 bytes")

    @property
    def simulated(self) -> bool:
        """True unless this is one of AMD's published ARKs: evidence under it is not from AMD hardware."""
        return self.spki_sha256 not in _AMD_ROOT_KEYS

    def to_dict(self) -> dict[str, object]:
        """Name, key digest (hex) and whether it is simulated."""
        return {"name": self.name, "spki_sha256": self.spki_sha256.hex(), "simulated": self.simulated}


# SHA-256 of the SubjectPublicKeyInfo of AMD's ARKs as AMD's key distribution service serves them
# (https://kdsintf.amd.com/vcek/v1/{Milan,Genoa}/cert_chain). Milan is checked by the unit tests against
# ../shared/testdata/amd-snp-milan/ark.pem; Genoa's certificate (SHA-256 of its DER 4c6598d1...2f1) was
# cross-checked against two independent published fingerprints. Turin is left out on purpose: its
# reports use a TCB layout this verifier does not decode (see securetrain.core.snp.report).
AMD_ROOTS: tuple[TrustedRoot, ...] = (
    TrustedRoot("AMD ARK-Milan", bytes.fromhex("9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9")),
    TrustedRoot("AMD ARK-Genoa", bytes.fromhex("429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831")),
)

_AMD_ROOT_KEYS = frozenset(root.spki_sha256 for root in AMD_ROOTS)
