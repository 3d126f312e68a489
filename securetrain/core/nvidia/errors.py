"""The root of every refusal the NVIDIA GPU verifier gives.

Each module of :mod:`securetrain.core.nvidia` raises its own subclass naming the check that failed (report
layout, certificate chain, FWID, signature, nonce, measurements). All of them are
:class:`~securetrain.core.errors.SecurityViolation`: GPU evidence is untrusted input, and evidence that cannot
be verified is refused, never retried.
"""

from securetrain.core.errors import SecurityViolation


class GpuEvidenceError(SecurityViolation):
    """NVIDIA GPU evidence (an attestation report or its certificates) was refused; the message names the check."""


class SpdmFormatError(GpuEvidenceError):
    """The report is not a well-formed SPDM 1.1 GET_MEASUREMENTS request and signed response."""
