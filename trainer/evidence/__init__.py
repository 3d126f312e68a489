"""Hardware evidence for the TEE: one interface, one provider per platform.

    EvidenceProvider.report(report_data) -> Evidence(report, vcek_chain_pem)

``SimulatedSnpProvider`` is the local stack's simulated SEV-SNP chip; ``ConfigfsTsmProvider`` asks the
guest kernel of a real SEV-SNP confidential VM through Linux configfs-tsm. :func:`provider_from_name`
builds one from the agent's configuration.
"""

from trainer.evidence.base import Evidence, EvidenceError, EvidenceProvider, EvidenceUnavailable
from trainer.evidence.configfs_tsm import ConfigfsTsmProvider
from trainer.evidence.simulated import SimulatedSnpProvider

__all__ = [
    "ConfigfsTsmProvider",
    "Evidence",
    "EvidenceError",
    "EvidenceProvider",
    "EvidenceUnavailable",
    "SimulatedSnpProvider",
]
