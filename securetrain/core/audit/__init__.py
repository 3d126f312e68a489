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
