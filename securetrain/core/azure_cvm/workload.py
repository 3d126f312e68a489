"""Where an Azure confidential VM's workload is measured: PCR 13, and the value it holds after boot.

On an Azure CVM the SEV-SNP report measures the paravisor and HOST_DATA is zero, so the workload is bound
through the vTPM: its boot extends :data:`WORKLOAD_PCR` once with the workload's measurement (why PCR 13, and
the event that records it: :mod:`securetrain.localstack.platform.measured_boot`, the emulated CVM's boot),
and the AK's quote covers that PCR. The approved release policy for the platform pins the value
(:mod:`securetrain.core.approved_release_policies`).
"""

from __future__ import annotations

import hashlib

WORKLOAD_PCR = 13
_SHA256_SIZE = 32


def workload_pcr_value(measurement: bytes) -> bytes:
    """The SHA-256 bank's :data:`WORKLOAD_PCR` after the boot extends it, from zero, with ``measurement`` alone:
    ``SHA-256(0³² ‖ SHA-256(measurement))``, as TPM2_PCR_Extend computes it."""
    return hashlib.sha256(bytes(_SHA256_SIZE) + hashlib.sha256(measurement).digest()).digest()
