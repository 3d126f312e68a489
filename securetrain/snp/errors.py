"""The root of every refusal the SEV-SNP verifier gives.

Each module of :mod:`securetrain.snp` raises its own subclass naming the check that failed (report
layout, certificate chain, signature ...). All of them are :class:`~securetrain.errors.SecurityViolation`:
evidence is untrusted input, and evidence that cannot be verified is refused, never retried.
"""

from securetrain.errors import SecurityViolation


class SnpEvidenceError(SecurityViolation):
    """SEV-SNP evidence (a report or its certificates) was refused; the message names the check."""
