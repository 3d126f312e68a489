"""What every evidence provider gives: a signed SEV-SNP report and the certificates that vouch for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from securetrain.core.errors import SecuretrainError, SecurityViolation

REPORT_DATA_SIZE = 64


class EvidenceUnavailable(SecuretrainError):
    """The platform cannot produce evidence here (no TEE interface, no certificates); the message says why."""


class EvidenceError(SecurityViolation):
    """The platform produced evidence that does not match the request: never sent on to be attested."""


@dataclass(frozen=True)
class Evidence:
    """An ATTESTATION_REPORT and the VCEK, ASK and ARK certificates as one PEM bundle (MAA's ``VcekCertChain``).

    On Azure Container Instances the report is the utility VM's, and ``uvm_endorsement`` is Microsoft's
    endorsement of that VM (a COSE_Sign1, MAA's ``Endorsements.Uvm``); elsewhere it is None.
    """

    report: bytes
    vcek_chain_pem: bytes
    uvm_endorsement: bytes | None = None


class EvidenceProvider(Protocol):
    """A source of hardware evidence for this TEE."""

    @property
    def tee_type(self) -> str:
        """What the evidence comes from, for health and job results: ``sev-snp`` or ``sev-snp-simulated``."""
        ...

    def report(self, report_data: bytes) -> Evidence:
        """A fresh report whose REPORT_DATA is ``report_data`` (exactly 64 bytes)."""
        ...


def check_report_data(report_data: bytes) -> None:
    """Refuse REPORT_DATA of the wrong size before asking the platform."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise EvidenceError(f"REPORT_DATA must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
