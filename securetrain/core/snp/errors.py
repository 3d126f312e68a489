"""The root of every refusal the SEV-SNP verifier gives.

Each module of :mod:`securetrain.core.snp` raises its own subclass naming the check that failed (report
layout, certificate chain, signature ...). All of them are :class:`~securetrain.core.errors.SecurityViolation`:
evidence is untrusted input, and evidence that cannot be verified is refused, never retried.
"""

from securetrain.core.errors import SecurityViolation


class SnpEvidenceError(SecurityViolation):
    """SEV-SNP evidence (a report or its certificates) was refused; the message names the check."""
