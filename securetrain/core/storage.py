"""Blob storage for securetrain: one small class over azure-storage-blob, the same for Azure and Azurite.

Storage only ever holds ciphertext, so this module moves bytes and never looks inside them. What it adds
to the SDK (streaming in bounded memory, the project's HTTP policy, errors that say what failed and what to
do) and how to build it are in docs/local-stack.md ("Blob storage access").
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import urlparse

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobProperties,
    BlobServiceClient,
    ContainerClient,
    StorageErrorCode,
    StorageStreamDownloader,
)

from securetrain.core.credentials import ClosableCredential
from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.core.http import AzureErrors, StorageRetry, azure_client_options
from securetrain.core.settings import ServiceSettings

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Uploads up to this size go in one request; larger ones as blocks.
SINGLE_PUT_LIMIT = 4 * MiB
#: The size of each uploaded block (Azure allows up to 4000 MiB; 4 MiB keeps memory small).
BLOCK_SIZE = 4 * MiB
#: The size of each download request, the first one included.
DOWNLOAD_CHUNK_SIZE = 4 * MiB
#: Blocks or chunks in flight at once per transfer; memory use is about this many blocks.
MAX_CONCURRENCY = 2
#: The buffer of a stream from :meth:`BlobStore.open_read`: small reads (a sealed header's fields) are served from
#: it, and a read at least this large goes straight to the download (a sealed segment into its own buffer), so that
#: a stream holds the SDK's current :data:`DOWNLOAD_CHUNK_SIZE` chunk and not a second copy of it.
READ_BUFFER_SIZE = 64 * 1024


class StorageError(SecuretrainError):
    """A blob storage operation failed; the message names the container, the blob and the cause."""


class StorageConfigurationError(StorageError, ConfigurationError):
    """The storage endpoint, credential or CA bundle given is unusable."""


class ContainerNotFound(StorageError):
    """The container does not exist."""


class BlobNotFound(StorageError):
    """The blob does not exist in its container."""


class BlobAlreadyExists(StorageError):
    """An upload would replace an existing blob and overwriting was not asked for."""


class StorageAccessDenied(StorageError, SecurityViolation):
    """The storage service refused the credential or its permissions (HTTP 401/403)."""


class StorageTlsError(StorageError, SecurityViolation):
    """The storage endpoint's TLS certificate did not verify against the trusted CAs."""


class PublicContainer(StorageError, SecurityViolation):
    """A container that must be private allows anonymous public access."""


class StorageUnreachable(StorageError):
    """No answer from the storage endpoint after the retries (connection refused, timeout, reset)."""


class StorageRequestFailed(StorageError):
    """The storage service answered with an error not covered by a more specific class."""


#: Blob storage's errors as :class:`StorageError` subclasses, for whoever calls the SDK's clients directly.
STORAGE_ERRORS = AzureErrors("storage", StorageAccessDenied, tls=StorageTlsError, failed=StorageRequestFailed,
                             not_found=BlobNotFound, unreachable=StorageUnreachable,
                             when_denied="check the account key, or that the identity has a Storage Blob Data role")


@dataclass(frozen=True)
class BlobInfo:
    """What storage says about a blob."""

    container: str
    name: str
    size: int
    content_md5: bytes | None
    metadata: dict[str, str]
    etag: str
    last_modified: datetime.datetime

    @classmethod
    def _from_properties(cls, container: str, properties: BlobProperties) -> BlobInfo:
        md5 = properties.content_settings.content_md5
        return cls(
            container=container,
            name=properties.name,
            size=properties.size,
            content_md5=bytes(md5) if md5 else None,
            metadata=dict(properties.metadata or {}),
            etag=properties.etag,
            last_modified=properties.last_modified,
        )


class _BlobReader(io.RawIOBase):
    """A blob as a readable raw stream; wrapped in a buffered reader by :meth:`BlobStore.open_read`."""

    def __init__(self, store: BlobStore, container: str, blob: str, downloader: StorageStreamDownloader[bytes]):
        super().__init__()
        self._store, self._container, self._blob, self._downloader = store, container, blob, downloader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        with self._store._translate_errors("read", self._container, self._blob):
            data = self._downloader.read(len(view))
        view[: len(data)] = data
        return len(data)


class BlobStore:
    """Blob storage at one account endpoint, with one credential.

    Build it with :meth:`from_settings`; the constructor takes any other credential. Use it as a context manager, or
    call :meth:`close`, to release its connections, and those of the credential :meth:`from_settings` made for it.
    """

    def __init__(
        self,
        account_url: str,
        credential: Any,
        *,
        ca_bundle: Path | None = None,
    ) -> None:
        """Connect to ``account_url`` (https only) with ``credential``, any the SDK takes (an azure-identity
        credential, ``AzureNamedKeyCredential``, ``AzureSasCredential``, another client's ``credential``).

        ``ca_bundle``: a PEM file of the CAs to trust instead of the system's (the local stack's CA).

        Raises:
            StorageConfigurationError: the URL is not https, or the CA bundle is not a readable file.
        """
        parsed = urlparse(account_url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise StorageConfigurationError(
                f"storage endpoint {account_url!r} is not an https URL; securetrain talks to storage over TLS only"
            )
        if ca_bundle is not None and not ca_bundle.is_file():
            raise StorageConfigurationError(
                f"CA bundle {ca_bundle} does not exist: set SECURETRAIN_CA_BUNDLE to a PEM file of the roots to "
                "trust, or leave it unset for the system's"
            )
        self._account_url = account_url.split("?", 1)[0]  # without a SAS: messages and logs name it
        self._client = BlobServiceClient(
            account_url, credential=credential, **azure_client_options(ca_bundle, StorageRetry),
            max_single_put_size=SINGLE_PUT_LIMIT, max_block_size=BLOCK_SIZE,
            max_single_get_size=DOWNLOAD_CHUNK_SIZE, max_chunk_get_size=DOWNLOAD_CHUNK_SIZE,
        )  # fmt: skip
        self._own_credential: ClosableCredential | None = None

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> BlobStore:
        """The store at ``$SECURETRAIN_STORAGE_ACCOUNT_URL``, signed in as the process's identity.

        The identity needs a data-plane role such as *Storage Blob Data Contributor*. The store owns the credential
        it makes from ``settings`` and closes it with itself.
        """
        credential = settings.credential()
        store = cls(settings.url("storage_account_url"), credential, ca_bundle=settings.ca_bundle)
        store._own_credential = credential
        return store

    @classmethod
    def for_client(cls, client: BlobServiceClient, *, ca_bundle: Path | None) -> BlobStore:
        """The store of ``client``'s account and credential, whatever made it (the Azure provider's ``WasbHook``),
        with this store's TLS trust, retries and timeouts: the SDK fixes those in a client's pipeline when it
        builds it, so the store builds its own (``client`` stays unused, holding no connection)."""
        return cls(client.url, client.credential, ca_bundle=ca_bundle)

    @property
    def account_url(self) -> str:
        return self._account_url

    def close(self) -> None:
        self._client.close()
        if self._own_credential is not None:
            self._own_credential.close()

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _translate_errors(self, operation: str, container: str, blob: str | None = None) -> Iterator[None]:
        """Turn the SDK's exceptions raised inside into :class:`StorageError` subclasses."""
        target = f"blob '{blob}' in container '{container}'" if blob is not None else f"container '{container}'"
        where = f"{target} at {self._account_url}"
        with STORAGE_ERRORS.translated(operation, where):
            try:
                yield
            except ResourceNotFoundError as exc:
                if exc.error_code == StorageErrorCode.CONTAINER_NOT_FOUND or blob is None:
                    raise ContainerNotFound(
                        f"cannot {operation} {where}: container '{container}' does not exist; check the name or "
                        "create it (BlobStore.ensure_container)"
                    ) from exc
                raise BlobNotFound(
                    f"cannot {operation} {where}: the blob does not exist; check its name (list the container with "
                    "a prefix to see what is there) or upload it first"
                ) from exc
            except ResourceExistsError as exc:
                raise BlobAlreadyExists(
                    f"cannot {operation} {where}: it already exists; pass overwrite=True to replace it"
                ) from exc

    def ensure_container(self, container: str) -> bool:
        """Make sure ``container`` exists and is private; True if it was created now.

        Raises:
            PublicContainer: it exists and allows anonymous public access; it is not used.
        """
        client = self._client.get_container_client(container)
        with self._translate_errors("create", container):
            try:
                client.create_container(public_access=None)
                logger.info("created container %s at %s", container, self._account_url)
                return True
            except ResourceExistsError:
                pass
        self.check_private(container)
        return False

    def check_private(self, container: str) -> None:
        """Make sure the existing ``container`` allows no anonymous access.

        Raises:
            ContainerNotFound: it does not exist.
            PublicContainer: it allows anonymous public access.
        """
        with self._translate_errors("read the properties of", container):
            public_access = self._client.get_container_client(container).get_container_properties().public_access
        if public_access is not None:
            raise PublicContainer(
                f"container '{container}' at {self._account_url} allows anonymous public access "
                f"({public_access}); make it private before using it for securetrain data"
            )

    def container_client(self, container: str) -> ContainerClient:
        """The SDK's client for ``container``, with this store's credential, TLS trust and retries.

        For what this class does not wrap (append blobs for the audit log, conditional writes); the
        caller translates the SDK's errors itself (:data:`STORAGE_ERRORS`).
        """
        return self._client.get_container_client(container)

    def upload_stream(
        self,
        container: str,
        blob: str,
        stream: BinaryIO,
        *,
        length: int | None = None,
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> BlobInfo:
        """Upload from a binary stream, reading it block by block; return the new blob's properties.

        ``length``: the number of bytes to read, when known (files: give it; the SDK then never reads
        ahead). Without it the stream is read to its end.

        Raises:
            BlobAlreadyExists: the blob exists and ``overwrite`` is False.
        """
        client = self._client.get_blob_client(container, blob)
        with self._translate_errors("upload", container, blob):
            client.upload_blob(
                stream,
                length=length,
                metadata=dict(metadata) if metadata is not None else None,
                overwrite=overwrite,
                max_concurrency=MAX_CONCURRENCY,
            )
        info = self.properties(container, blob)
        logger.info("uploaded %s/%s (%d bytes)", container, blob, info.size)
        return info

    def upload_file(
        self,
        container: str,
        blob: str,
        path: Path,
        *,
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> BlobInfo:
        """Upload the file at ``path`` (streamed, see :meth:`upload_stream`)."""
        with open(path, "rb") as file:
            return self.upload_stream(
                container, blob, file, length=path.stat().st_size, metadata=metadata, overwrite=overwrite
            )

    def download_to(self, container: str, blob: str, destination: BinaryIO) -> int:
        """Write the blob into the writable binary stream ``destination``, chunk by chunk; return its size."""
        with self._translate_errors("download", container, blob):
            downloader = self._client.get_blob_client(container, blob).download_blob(max_concurrency=MAX_CONCURRENCY)
            return downloader.readinto(destination)

    def download_chunks(self, container: str, blob: str) -> Iterator[bytes]:
        """Yield the blob's content in chunks of at most :data:`DOWNLOAD_CHUNK_SIZE` bytes."""
        with self._translate_errors("download", container, blob):
            downloader = self._client.get_blob_client(container, blob).download_blob()
            chunks: Iterable[bytes] = downloader.chunks()
            yield from chunks

    def open_read(self, container: str, blob: str, *, length: int | None = None) -> io.BufferedReader:
        """Open the blob as a readable binary stream that downloads as it is read. Close it when done.

        It holds the current download chunk (:data:`DOWNLOAD_CHUNK_SIZE`) and a :data:`READ_BUFFER_SIZE` buffer.

        ``length``: only the blob's first ``length`` bytes, fetched by one request of that size (a file's header,
        without the first :data:`DOWNLOAD_CHUNK_SIZE` bytes a whole-blob read fetches at once).

        Raises:
            BlobNotFound, ContainerNotFound: at once, not on the first read.
        """
        with self._translate_errors("open", container, blob):
            client = self._client.get_blob_client(container, blob)
            downloader = client.download_blob() if length is None else client.download_blob(offset=0, length=length)
        return io.BufferedReader(_BlobReader(self, container, blob, downloader), buffer_size=READ_BUFFER_SIZE)

    def list_blobs(self, container: str, prefix: str = "") -> Iterator[BlobInfo]:
        """Yield the blobs in ``container`` whose names start with ``prefix``, metadata included."""
        with self._translate_errors("list", container):
            for properties in self._client.get_container_client(container).list_blobs(
                name_starts_with=prefix or None, include=["metadata"]
            ):
                yield BlobInfo._from_properties(container, properties)

    def properties(self, container: str, blob: str) -> BlobInfo:
        """The blob's size, content MD5 (when storage has one), metadata, ETag and modification time."""
        with self._translate_errors("read the properties of", container, blob):
            properties = self._client.get_blob_client(container, blob).get_blob_properties()
        return BlobInfo._from_properties(container, properties)

    def delete(self, container: str, blob: str) -> None:
        """Delete the blob and its snapshots.

        Raises:
            BlobNotFound: there is no such blob.
        """
        with self._translate_errors("delete", container, blob):
            self._client.get_blob_client(container, blob).delete_blob(delete_snapshots="include")
        logger.info("deleted %s/%s", container, blob)
