"""Hardware evidence for the TEE: one interface, one provider per platform.

    EvidenceProvider.report(report_data) -> Evidence(report, vcek_chain_pem)

``ConfigfsTsmProvider`` asks the guest kernel of a real SEV-SNP confidential VM through Linux configfs-tsm.
The local stack's simulated chip (securetrain.localstack.platform) implements the same interface.
"""

from securetrain.tee.evidence.base import Evidence, EvidenceError, EvidenceProvider, EvidenceUnavailable
from securetrain.tee.evidence.configfs_tsm import ConfigfsTsmProvider

__all__ = [
    "ConfigfsTsmProvider",
    "Evidence",
    "EvidenceError",
    "EvidenceProvider",
    "EvidenceUnavailable",
]
