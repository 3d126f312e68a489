"""The GPU nonce: how a GPU attestation report is made fresh for, and tied to, the CPU evidence of one TEE.

The CPU report binds the TEE's runtime data (its public keys and the job's nonce, RFC 8785 JSON) through
REPORT_DATA = SHA-256(runtime data) || 32 zero bytes (:func:`securetrain.core.attestation.maa.report_data_for`).
The GPU cannot sign those 64 bytes; what the requester controls in an SPDM GET_MEASUREMENTS is its 32-byte
nonce. So the TEE asks its GPU for measurements with

    nonce = SHA-256("securetrain nvidia-gpu-nonce v1" || 0x00 || SHA-256(runtime data))

and the verifier recomputes it from the runtime data the CPU report binds. A GPU report is then accepted only
beside the CPU evidence it was requested for: replaying it with another TEE's evidence, or another job's,
changes the expected nonce. The domain label keeps the value from being mistaken for any other hash of the
same runtime data.
"""

from __future__ import annotations

import hashlib

GPU_NONCE_LABEL = b"securetrain nvidia-gpu-nonce v1\x00"


def gpu_nonce(runtime_data: bytes) -> bytes:
    """The SPDM nonce a TEE whose CPU evidence binds ``runtime_data`` must ask its GPU to sign."""
    # SHA-256's 32 bytes are exactly SPDM's nonce size.
    return hashlib.sha256(GPU_NONCE_LABEL + hashlib.sha256(runtime_data).digest()).digest()
