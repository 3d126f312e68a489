"""Where an audit log's entries and checkpoints are kept: append blobs (:class:`BlobAuditStore`), or Azure
Confidential Ledger (:class:`ConfidentialLedgerAuditStore`, written against the SDK's documented API 1.1 and
**not run here**: there is no local stand-in for the service).

How each serializes concurrent writers and what each protects against are in docs/audit.md ("Storage").
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.confidentialledger import ConfidentialLedgerClient
from azure.storage.blob import BlobClient, ContainerClient

from securetrain.core.audit.errors import AuditAppendConflict, AuditStoreAccessDenied, AuditStoreError
from securetrain.core.errors import ConfigurationError
from securetrain.core.http import AzureErrors, AzureRetry
from securetrain.core.settings import ServiceSettings
from securetrain.core.storage import STORAGE_ERRORS, BlobStore

logger = logging.getLogger(__name__)

#: The container that holds audit logs.
AUDIT_CONTAINER = "securetrain-audit"
#: The largest entry or checkpoint line accepted: one append block (4 MiB in every service version).
MAX_LINE_BYTES = 4 * 1024 * 1024
_LOG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
#: A refusal is :class:`AuditStoreAccessDenied`, a TLS failure a TLS error, any other failure :class:`AuditStoreError`.
_LEDGER_ERRORS = AzureErrors("the confidential ledger", AuditStoreAccessDenied, failed=AuditStoreError,
                             when_denied="check the identity's ledger role (Contributor to write, Reader to read)")


def check_log_name(name: str) -> str:
    """Return ``name`` if it is a valid log name: letters, digits, '.', '_', '-', at most 200, no leading dot.

    Raises:
        ConfigurationError: it is not.
    """
    if not _LOG_NAME.fullmatch(name):
        raise ConfigurationError(
            f"audit log name {name!r} is invalid: 1-200 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (a DAG run's id, for example)"
        )
    return name


@dataclass(frozen=True)
class LogSnapshot:
    """A log's entry lines (without newlines) as read, and the position to append the next one at."""

    lines: list[bytes]
    position: int


class AuditStore(Protocol):
    """Append-only storage for one audit log's entries and checkpoints."""

    @property
    def description(self) -> str:
        """Where the log is, for messages."""
        ...

    def read_all(self) -> LogSnapshot:
        """Every entry line written so far (an empty snapshot for a log never written)."""
        ...

    def append(self, entry: bytes, *, position: int) -> int:
        """Append one entry line if the log still ends at ``position`` (from :meth:`read_all` or the
        previous append); return the new end position.

        Raises:
            AuditAppendConflict: another writer appended since; re-read and rebuild the entry.
        """
        ...

    def append_checkpoint(self, checkpoint: bytes) -> None:
        """Append one checkpoint line (checkpoints are independent signed statements: no position)."""
        ...

    def read_checkpoints(self) -> list[bytes]:
        """Every checkpoint line written so far."""
        ...


def _lines(data: bytes) -> list[bytes]:
    """Split stored JSON lines. Canonical JSON never holds a raw newline, so a newline always ends a line;
    a last line without one is kept (it was cut or edited, and verification will say so)."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _check_line(line: bytes) -> bytes:
    if b"\n" in line or not line:
        raise AuditStoreError("an audit line must be non-empty and hold no newline (it is one canonical JSON value)")
    if len(line) + 1 > MAX_LINE_BYTES:
        raise AuditStoreError(
            f"an audit line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit of one append; keep event "
            "details small (digests and ids, not documents)"
        )
    return line + b"\n"


class AppendBlobLines:
    """JSON lines in one append blob, one line per append block; each entry line appended only where the writer
    read the blob to end (the ``appendpos`` condition). The machinery of :class:`BlobAuditStore`, and of every
    other hash-chained log kept in an append blob (the privacy-budget ledger)."""

    def __init__(self, blob: BlobClient) -> None:
        """``blob``: an azure-storage-blob client the caller configured and owns; its container must exist."""
        self._blob = blob

    @property
    def description(self) -> str:
        """The blob's URL."""
        return self._blob.url

    def _create_if_missing(self) -> None:
        """Create the append blob unless it exists; never replace it (``If-None-Match: *``)."""
        with STORAGE_ERRORS.translated("create", self._blob.url):
            try:
                self._blob.create_append_blob(match_condition=MatchConditions.IfMissing)
                logger.info("created append blob %s", self._blob.url)
            except ResourceExistsError:
                pass  # another writer created it first: that is the blob to append to
            except HttpResponseError as exc:
                if exc.status_code != 412:
                    raise

    def read_all(self) -> LogSnapshot:
        """The lines and the blob's length (the next append position); empty for a blob never written."""
        with STORAGE_ERRORS.translated("read", self._blob.url):
            try:
                data = self._blob.download_blob().readall()
            except ResourceNotFoundError:
                data = b""
        return LogSnapshot(lines=_lines(data), position=len(data))

    def append(self, line: bytes, *, position: int) -> int:
        """Append ``line`` as one block at byte offset ``position`` (the ``appendpos`` condition); return the new
        end position.

        Raises:
            AuditAppendConflict: another writer appended since ``position`` was read (412).
        """
        block = _check_line(line)
        if position == 0:
            self._create_if_missing()
        with STORAGE_ERRORS.translated("append to", self._blob.url):
            try:
                self._blob.append_block(block, appendpos_condition=position)
            except HttpResponseError as exc:
                if exc.status_code == 412:
                    raise AuditAppendConflict(
                        f"{self._blob.url} no longer ends at byte {position}: another writer appended"
                    ) from exc
                if exc.status_code == 409 and "BlockCountExceedsLimit" in str(exc.error_code):
                    raise AuditStoreError(
                        f"{self._blob.url} holds the 50,000 blocks an append blob can: start a new log"
                    ) from exc
                raise
        return position + len(block)

    def append_anywhere(self, line: bytes) -> None:
        """Append ``line`` as one block wherever the blob ends (for independent signed statements)."""
        block = _check_line(line)
        self._create_if_missing()
        with STORAGE_ERRORS.translated("append to", self._blob.url):
            self._blob.append_block(block)


class BlobAuditStore:
    """One audit log in append blobs: ``audit/<log>.jsonl`` and ``audit/<log>.checkpoints.jsonl``."""

    def __init__(self, container: ContainerClient, log_name: str) -> None:
        """Keep log ``log_name`` in ``container``, an azure-storage-blob client the caller configured
        (credential, CA bundle) and owns. The container must exist and be private."""
        self._log = check_log_name(log_name)
        self._container = container
        self._entries = AppendBlobLines(container.get_blob_client(f"audit/{self._log}.jsonl"))
        self._checkpoints = AppendBlobLines(container.get_blob_client(f"audit/{self._log}.checkpoints.jsonl"))

    @classmethod
    @contextlib.contextmanager
    def from_settings(
        cls, settings: ServiceSettings, log_name: str, *, container: str = AUDIT_CONTAINER
    ) -> Iterator[BlobAuditStore]:
        """The log in the storage account the process's settings name, as a context manager that closes the
        connection. Creates the container, private, if it does not exist.

        Raises:
            StorageError: the container exists and is public, or storage refuses or cannot be reached.
        """
        with BlobStore.from_settings(settings) as blobs:
            blobs.ensure_container(container)
            yield cls(blobs.container_client(container), log_name)

    @property
    def description(self) -> str:
        """The entries blob's URL."""
        return self._entries.description

    def read_all(self) -> LogSnapshot:
        """The entry lines and the blob's length (the next append position)."""
        return self._entries.read_all()

    def append(self, entry: bytes, *, position: int) -> int:
        """Append ``entry`` as one block at byte offset ``position`` (the ``appendpos`` condition)."""
        return self._entries.append(entry, position=position)

    def append_checkpoint(self, checkpoint: bytes) -> None:
        self._checkpoints.append_anywhere(checkpoint)

    def read_checkpoints(self) -> list[bytes]:
        return self._checkpoints.read_all().lines


class ConfidentialLedgerAuditStore:
    """One audit log in Azure Confidential Ledger: a collection per log for entries, one for checkpoints.

    **Not run here** (no local stand-in for the service); written against azure-confidentialledger 1.1's
    documented API. Each line is one ledger entry, and ``append`` waits until the ledger reports it
    committed (durably replicated). The ledger has no conditional write, so ``position`` (a count of
    entries) is checked only against what this process last read: concurrent writers to one log are not
    prevented here, and a lost race shows at verification as an inserted entry (a repeated seq). Keep one
    writer per log, as the pipeline does.
    """

    def __init__(self, client: ConfidentialLedgerClient, log_name: str) -> None:
        """``client``: an ``azure.confidentialledger.ConfidentialLedgerClient`` the caller built and owns."""
        self._log = check_log_name(log_name)
        self._client = client
        self._entries_collection = f"securetrain-audit-{self._log}"
        self._checkpoints_collection = f"securetrain-audit-{self._log}-checkpoints"
        self._known_count: int | None = None

    @classmethod
    def for_azure(
        cls, endpoint: str, credential: TokenCredential, ledger_certificate: Path, log_name: str
    ) -> ConfidentialLedgerAuditStore:
        """The log in the ledger at ``endpoint`` (``https://<name>.confidential-ledger.azure.com``).

        ``ledger_certificate``: the ledger's TLS certificate (PEM). Pin it: give a file you obtained and
        checked beforehand. If the file does not exist the SDK fetches it from the ledger identity service
        and writes it there, trusting that service on first use.
        """
        client = ConfidentialLedgerClient(
            endpoint, credential, ledger_certificate_path=str(ledger_certificate), retry_policy=AzureRetry()
        )
        return cls(client, log_name)

    @property
    def description(self) -> str:
        """The ledger collection holding the entries."""
        return f"confidential ledger collection {self._entries_collection}"

    def _read(self, collection: str) -> list[bytes]:
        with _LEDGER_ERRORS.translated("read", f"audit log {self._log} in the ledger"):
            return [
                str(item["contents"]).encode()
                for item in self._client.list_ledger_entries(collection_id=collection)
            ]

    def _write(self, collection: str, line: bytes) -> None:
        _check_line(line)
        with _LEDGER_ERRORS.translated("append to", f"audit log {self._log} in the ledger"):
            self._client.begin_create_ledger_entry({"contents": line.decode()}, collection_id=collection).result()

    def read_all(self) -> LogSnapshot:
        """The entry lines; the position is their count."""
        lines = self._read(self._entries_collection)
        self._known_count = len(lines)
        return LogSnapshot(lines=lines, position=len(lines))

    def append(self, entry: bytes, *, position: int) -> int:
        """Write ``entry`` and wait for it to commit; see the class docstring for what ``position`` guards."""
        if self._known_count is not None and position != self._known_count:
            raise AuditAppendConflict(
                f"{self.description} has {self._known_count} entries as last read, not {position}"
            )
        self._write(self._entries_collection, entry)
        self._known_count = position + 1
        return position + 1

    def append_checkpoint(self, checkpoint: bytes) -> None:
        self._write(self._checkpoints_collection, checkpoint)

    def read_checkpoints(self) -> list[bytes]:
        return self._read(self._checkpoints_collection)
