"""The one refusal the ACI verifier gives: :class:`AciEvidenceError`, naming the check that failed."""

from __future__ import annotations

from securetrain.core.errors import SecurityViolation


class AciEvidenceError(SecurityViolation):
    """ACI evidence was refused. ``check`` names the failed check (``uvm-endorsement.signature``, ``host-data`` ...);
    the message starts with it and says what was seen."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
