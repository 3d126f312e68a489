"""The audit log as its users see it: record events, read them back, verify them.

:class:`AuditLog` ties a store, the chain and the checkpoints together. Recording an event reads the
head once (checking the links of what is there, so that nothing is ever chained onto a broken log),
builds the next entry and appends it at the position where the log ended; if another writer got there
first, it re-reads the head and tries again (at most :data:`MAX_APPEND_ATTEMPTS` times). With a signing
key it signs a checkpoint every ``checkpoint_every`` entries and when closed; without one it only
appends, and a writer holding the key signs later.
"""

from __future__ import annotations

import logging
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securetrain.core.audit.chain import AuditChain, AuditEntry, ChainVerdict, verify
from securetrain.core.audit.checkpoints import Checkpoint
from securetrain.core.audit.errors import AuditAppendConflict, AuditKeyError, AuditStoreError
from securetrain.core.audit.events import AuditEvent
from securetrain.core.audit.store import AuditStore

logger = logging.getLogger(__name__)

#: How often one record() re-reads the head after losing a race before giving up.
MAX_APPEND_ATTEMPTS = 20
#: Entries between two signed checkpoints, by default.
DEFAULT_CHECKPOINT_EVERY = 50


class AuditLog:
    """One audit log in ``store``.

    Use it as a context manager (or call :meth:`close`) so that the last entries get a signed checkpoint.
    """

    def __init__(
        self,
        store: AuditStore,
        signing_key: Ed25519PrivateKey | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        """``signing_key``: the audit key that signs checkpoints; None for a writer that only appends.

        Raises:
            ValueError: ``checkpoint_every`` is less than 1.
        """
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, not {checkpoint_every}")
        self._store = store
        self._signing_key = signing_key
        self._checkpoint_every = checkpoint_every
        self._chain: AuditChain | None = None
        self._position = 0
        self._signed_seq: int | None = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        # The entries recorded before a failure are true: sign them whatever happened.
        self.close()

    def _reload(self) -> list[bytes]:
        """Read the log, check its links and move the local head to its end."""
        snapshot = self._store.read_all()
        self._chain = AuditChain.from_lines(snapshot.lines)
        self._position = snapshot.position
        return snapshot.lines

    def record(self, event: AuditEvent) -> AuditEntry:
        """Append ``event`` to the log and return its entry.

        Raises:
            AuditChainBroken: the stored log's links are broken; nothing is appended to it.
            AuditStoreError: the store failed, or other writers won the race :data:`MAX_APPEND_ATTEMPTS` times.
        """
        if self._chain is None:
            self._reload()
        for _ in range(MAX_APPEND_ATTEMPTS):
            assert self._chain is not None
            entry = self._chain.append(event)
            try:
                self._position = self._store.append(entry.line, position=self._position)
            except AuditAppendConflict:
                lines = self._reload()
                # A retried request whose first attempt did land also ends here: then it is already written.
                if entry.seq < len(lines) and lines[entry.seq] == entry.line:
                    break
                logger.debug("another writer appended to %s; retrying on the new head", self._store.description)
                continue
            break
        else:
            raise AuditStoreError(
                f"could not append to {self._store.description}: other writers appended first "
                f"{MAX_APPEND_ATTEMPTS} times in a row"
            )
        logger.debug("audit entry %d: %s (%s)", entry.seq, event.kind, event.source)
        if self._signing_key is not None and (entry.seq + 1) % self._checkpoint_every == 0:
            self._sign(entry.seq, entry.hash)
        return entry

    def _sign(self, seq: int, head_hash: str) -> Checkpoint:
        assert self._signing_key is not None
        checkpoint = Checkpoint.sign(self._signing_key, seq, head_hash)
        self._store.append_checkpoint(checkpoint.to_line())
        self._signed_seq = seq
        logger.info("signed audit checkpoint at entry %d of %s", seq, self._store.description)
        return checkpoint

    def checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint of the log's current head now (re-read, links checked); None if the log is empty
        or the head is already signed by this writer.

        Raises:
            AuditKeyError: this log has no signing key.
            AuditChainBroken: the stored log's links are broken; a broken head is never signed.
        """
        if self._signing_key is None:
            raise AuditKeyError("this audit log was opened without a signing key, so it cannot sign checkpoints")
        self._reload()
        assert self._chain is not None
        head_hash = self._chain.head_hash
        if head_hash is None or self._signed_seq == self._chain.next_seq - 1:
            return None
        return self._sign(self._chain.next_seq - 1, head_hash)

    def close(self) -> None:
        """Sign the head if this log has a signing key and recorded anything unsigned."""
        if self._signing_key is not None and self._chain is not None:
            self.checkpoint()

    def entries(self) -> list[AuditEntry]:
        """Every entry, parsed, after checking the links (not the checkpoints: see :meth:`verify`).

        Raises:
            AuditChainBroken: the links are broken.
        """
        lines = self._store.read_all().lines
        AuditChain.from_lines(lines)
        return [AuditEntry.parse(line, position) for position, line in enumerate(lines)]

    def verify(self, public_key: Ed25519PublicKey, *, allow_unsigned_tail: bool = False) -> ChainVerdict:
        """Verify the stored log with the audit public key (see :func:`securetrain.core.audit.chain.verify`)."""
        checkpoints = self._store.read_checkpoints()
        entries = self._store.read_all().lines
        return verify(entries, checkpoints, public_key, allow_unsigned_tail=allow_unsigned_tail)
