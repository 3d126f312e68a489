"""What the audit log raises when its evidence of tampering is found, and when it cannot be used.

Every failure of the chain's integrity is an :class:`AuditChainBroken` carrying ``seq``: the sequence
number the evidence points at (for an entry error, the first entry that was changed, removed, reordered
or inserted; for a checkpoint error, the checkpoint's sequence number). They are security violations:
never retried, exit code 3.
"""

from __future__ import annotations

from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation


class AuditChainBroken(SecurityViolation):
    """The audit log's hash chain or its signed checkpoints do not verify; ``seq`` names where."""

    def __init__(self, seq: int | None, message: str) -> None:
        super().__init__(message)
        self.seq = seq


class EntryChanged(AuditChainBroken):
    """Entry ``seq`` is not what was written: its bytes, its sequence number or its link were edited."""


class EntriesRemoved(AuditChainBroken):
    """Entries starting at ``seq`` are missing (``count`` of them, when the evidence says how many)."""

    def __init__(self, seq: int, message: str, count: int | None = None) -> None:
        super().__init__(seq, message)
        self.count = count


class EntriesReordered(AuditChainBroken):
    """The entries are all there but out of order; ``seq`` is the first whose position is wrong."""


class EntryInserted(AuditChainBroken):
    """An entry that was never part of the chain sits at position ``seq`` (a forgery or a replayed copy)."""


class CheckpointInvalid(AuditChainBroken):
    """A checkpoint is malformed or its signature does not verify with the audit public key."""


class CheckpointMismatch(AuditChainBroken):
    """A validly signed checkpoint names a head hash that the entries at its ``seq`` no longer have."""


class UnsignedEntries(AuditChainBroken):
    """Entries from ``seq`` on are not covered by any signed checkpoint, so nothing vouches for them."""


class AuditEventInvalid(SecuretrainError):
    """An audit event has an unknown kind or source, a malformed time, or details that are not plain JSON."""


class AuditKeyError(ConfigurationError):
    """The audit signing or verification key is missing, unreadable, of the wrong type or too widely readable."""


class AuditKeyNotPinned(AuditKeyError):
    """No audit public key is pinned (by fingerprint) for verification: the check cannot complete, so it denies."""


class AuditKeyUntrusted(SecurityViolation):
    """The audit public key offered for verification is not the pinned one."""


class AuditStoreError(SecuretrainError):
    """The audit store could not be read or written; the message names the log and the cause."""


class AuditStoreAccessDenied(AuditStoreError, SecurityViolation):
    """The audit store refused the credential (HTTP 401/403)."""


class AuditAppendConflict(AuditStoreError):
    """Another writer appended to the log since it was read: re-read the head and build the entry again."""
