"""The tamper-evident audit log: events in a hash chain of canonical JSON, with signed checkpoints.

See docs/audit.md for the format and what it proves. The pieces:

* :mod:`~securetrain.core.audit.events`: :class:`AuditEvent`, the fixed kinds and sources;
* :mod:`~securetrain.core.audit.chain`: entries, :class:`AuditChain`, :func:`verify`;
* :mod:`~securetrain.core.audit.checkpoints`: signed heads and the audit signing key;
* :mod:`~securetrain.core.audit.store`: append-blob and Confidential Ledger storage;
* :mod:`~securetrain.core.audit.sources`: events from the Key Vault and attestation decision logs;
* :mod:`~securetrain.core.audit.log`: :class:`AuditLog`, the facade that records and verifies;
* :mod:`~securetrain.core.audit.tee_log`: the TEE's own event log, signed inside the TEE with its attested key;
* :mod:`~securetrain.core.audit.trail`: a whole log verified with the pinned audit key and the TEE's signatures.
"""

from securetrain.core.audit.chain import AuditChain, AuditEntry, ChainVerdict, verify
from securetrain.core.audit.checkpoints import (
    Checkpoint,
    load_or_create_signing_key,
    load_public_key,
    load_signing_key,
    public_key_pem,
)
from securetrain.core.audit.errors import (
    AuditAppendConflict,
    AuditChainBroken,
    AuditEventInvalid,
    AuditKeyError,
    AuditStoreAccessDenied,
    AuditStoreError,
    CheckpointInvalid,
    CheckpointMismatch,
    EntriesRemoved,
    EntriesReordered,
    EntryChanged,
    EntryInserted,
    UnsignedEntries,
)
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource, rfc3339_utc
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import AUDIT_CONTAINER, AuditStore, BlobAuditStore, ConfidentialLedgerAuditStore

__all__ = [
    "AUDIT_CONTAINER",
    "AuditAppendConflict",
    "AuditChain",
    "AuditChainBroken",
    "AuditEntry",
    "AuditEvent",
    "AuditEventInvalid",
    "AuditKeyError",
    "AuditLog",
    "AuditStore",
    "AuditStoreAccessDenied",
    "AuditStoreError",
    "BlobAuditStore",
    "ChainVerdict",
    "Checkpoint",
    "CheckpointInvalid",
    "CheckpointMismatch",
    "ConfidentialLedgerAuditStore",
    "EntriesRemoved",
    "EntriesReordered",
    "EntryChanged",
    "EntryInserted",
    "EventKind",
    "EventSource",
    "UnsignedEntries",
    "load_or_create_signing_key",
    "load_public_key",
    "load_signing_key",
    "public_key_pem",
    "rfc3339_utc",
    "verify",
]
