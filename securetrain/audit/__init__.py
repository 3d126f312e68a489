"""The tamper-evident audit log: events in a hash chain of canonical JSON, with signed checkpoints.

See docs/audit.md for the format and what it proves. The pieces:

* :mod:`~securetrain.audit.events`: :class:`AuditEvent`, the fixed kinds and sources;
* :mod:`~securetrain.audit.chain`: entries, :class:`AuditChain`, :func:`verify`;
* :mod:`~securetrain.audit.checkpoints`: signed heads and the audit signing key;
* :mod:`~securetrain.audit.store`: append-blob and Confidential Ledger storage;
* :mod:`~securetrain.audit.sources`: events from the Key Vault and attestation decision logs;
* :mod:`~securetrain.audit.log`: :class:`AuditLog`, the facade that records and verifies;
* :mod:`~securetrain.audit.tee_log`: the TEE's own event log, signed inside the TEE with its attested key;
* :mod:`~securetrain.audit.trail`: a whole log verified with the pinned audit key and the TEE's signatures.
"""

from securetrain.audit.chain import AuditChain, AuditEntry, ChainVerdict, verify
from securetrain.audit.checkpoints import (
    Checkpoint,
    load_or_create_signing_key,
    load_public_key,
    load_signing_key,
    local_signing_key_path,
    public_key_pem,
)
from securetrain.audit.errors import (
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
from securetrain.audit.events import AuditEvent, EventKind, EventSource, rfc3339_utc
from securetrain.audit.log import AuditLog
from securetrain.audit.store import AUDIT_CONTAINER, AuditStore, BlobAuditStore, ConfidentialLedgerAuditStore

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
    "local_signing_key_path",
    "public_key_pem",
    "rfc3339_utc",
    "verify",
]
