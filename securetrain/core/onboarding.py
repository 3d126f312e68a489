"""The data owner's side: seal a dataset for the KEK's public key, put the sealed shards in storage, and
publish a manifest of them signed with the owner's key.

This runs where plaintext is allowed (the data owner's zone): the plaintext is sealed in memory and only
ciphertext is uploaded. The blob's metadata names the dataset, its plaintext digest and the KEK, so the
pipeline's data-security check can compare them with the sealed header without decrypting anything.

The signed manifest is what the TEE trusts about a dataset: which blobs make up a version, and the seal
context each must carry. A job spec names only the manifest; the TEE checks the owner's signature against
the owner keys pinned in its configuration and opens exactly the shards the owner listed, under the
contexts the owner sealed them with. Every dataset shard is sealed with ``kind: dataset`` in its context
(models and checkpoints carry other kinds), so no other file sealed to the same KEK passes for training data.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core import signed_documents
from securetrain.core.contracts.base import DocumentInvalid
from securetrain.core.contracts.job_spec import Columns, DatasetRef
from securetrain.core.errors import ConfigurationError
from securetrain.core.sealed import KekPublicKey, seal
from securetrain.core.storage import BlobStore

log = logging.getLogger(__name__)

#: The seal-context entry every dataset shard carries; models and checkpoints carry other kinds.
DATASET_KIND = "dataset"
#: A manifest is a small JSON document; a larger blob is refused before it is parsed.
MAX_MANIFEST_BYTES = 4 << 20


@dataclass(frozen=True)
class SealedShard:
    """A sealed shard in storage, as the data owner produced it (JSON-safe: it travels in XCom)."""

    container: str
    blob: str
    format: str
    context: Mapping[str, str]
    kek_id: str
    plaintext_sha256: str
    plaintext_bytes: int
    sealed_bytes: int

    def to_json(self) -> dict[str, object]:
        document = asdict(self)
        document["context"] = dict(self.context)
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SealedShard:
        try:
            return cls(**{**document, "context": dict(document["context"])})
        except (KeyError, TypeError) as exc:
            raise ManifestInvalid(f"a shard entry of the dataset manifest is malformed: {exc}") from None


def seal_and_upload(
    plaintext: bytes,
    *,
    kek: KekPublicKey,
    store: BlobStore,
    container: str,
    blob: str,
    file_format: str,
    context: Mapping[str, str],
    overwrite: bool = False,
) -> SealedShard:
    """Seal ``plaintext`` (a Parquet table, safetensors or Arrow stream) for ``kek`` under ``context`` and upload it.

    The seal context (``context`` plus ``kind: dataset`` and the format) is bound into the header: the TEE
    refuses a shard whose context differs from the one in the owner's signed manifest, so a shard cannot be
    swapped for another file sealed to the same KEK.
    """
    if "kind" in context:
        raise ConfigurationError(f"the seal context of a dataset shard sets kind={DATASET_KIND!r} itself; drop 'kind'")
    context = {**context, "kind": DATASET_KIND, "format": file_format}
    digest = hashlib.sha256(plaintext).hexdigest()
    sealed = io.BytesIO()
    seal(io.BytesIO(plaintext), sealed, kek, context)
    store.ensure_container(container)
    sealed.seek(0)
    info = store.upload_stream(
        container,
        blob,
        sealed,
        length=len(sealed.getvalue()),
        overwrite=overwrite,
        metadata={"plaintext_sha256": digest, "kek_id": kek.kek_id, **_metadata(context)},
    )
    log.info("sealed %d bytes of %s for %s and uploaded %s/%s", len(plaintext), file_format, kek.kek_id, container, blob)
    return SealedShard(
        container=container,
        blob=blob,
        format=file_format,
        context=context,
        kek_id=kek.kek_id,
        plaintext_sha256=digest,
        plaintext_bytes=len(plaintext),
        sealed_bytes=info.size,
    )


class ManifestInvalid(ConfigurationError):
    """A dataset manifest does not parse."""


@dataclass(frozen=True)
class DatasetManifest:
    """One version of a sealed dataset: its shards, in training order, as the data owner sealed them.

    Stored as ``<dataset id>/<version>/manifest.json`` beside the shards and signed by the data owner
    (``signatures``, :mod:`securetrain.core.signed_documents`); the pipeline's data-security check compares
    every shard's sealed header and blob with it before anything is trained, and the TEE opens only the
    shards of a manifest whose owner signature it verified. ``columns`` (the label and feature columns the
    owner published) is left out of the document when absent, so a manifest written without it reads back,
    and verifies, as it was signed.
    """

    dataset_id: str
    version: str
    kek_id: str
    shards: Sequence[SealedShard]
    created_at: str = ""
    signatures: Sequence[Mapping[str, str]] = ()
    columns: Columns | None = None

    @staticmethod
    def blob_name(dataset_id: str, version: str) -> str:
        return f"{dataset_id}/{version}/manifest.json"

    def to_json(self) -> dict[str, Any]:
        document = {"dataset_id": self.dataset_id, "version": self.version, "kek_id": self.kek_id,
                    "created_at": self.created_at, "shards": [shard.to_json() for shard in self.shards],
                    "signatures": [dict(entry) for entry in self.signatures]}  # fmt: skip
        if self.columns is not None:
            document["columns"] = self.columns.to_json()
        return document

    @classmethod
    def from_json(cls, document: Any) -> DatasetManifest:
        if not isinstance(document, Mapping) or not isinstance(document.get("shards"), list) or not document["shards"]:
            raise ManifestInvalid("a dataset manifest is a JSON object with a non-empty list of shards")
        signatures = document.get("signatures", [])
        if not isinstance(signatures, list) or not all(isinstance(entry, Mapping) for entry in signatures):
            raise ManifestInvalid("a dataset manifest's signatures are a list of objects")
        try:
            columns = Columns.from_json(document["columns"]) if "columns" in document else None
            return cls(str(document["dataset_id"]), str(document["version"]), str(document["kek_id"]),
                       tuple(SealedShard.from_json(shard) for shard in document["shards"]),
                       str(document.get("created_at", "")), tuple(dict(entry) for entry in signatures),
                       columns)  # fmt: skip
        except KeyError as exc:
            raise ManifestInvalid(f"the dataset manifest lacks {exc.args[0]}") from None
        except DocumentInvalid as exc:
            raise ManifestInvalid(f"the dataset manifest's columns: {exc.field}: {exc.reason}") from None

    def sha256(self) -> str:
        """SHA-256 (hex) of what the manifest's signatures cover: the digest a contract pins for a dataset version."""
        return hashlib.sha256(signed_documents.signing_bytes(self.to_json())).hexdigest()

    def signed(self, owner_key: Ed25519PrivateKey) -> DatasetManifest:
        """This manifest with the data owner's signature (what the TEE checks before it opens a shard)."""
        document = signed_documents.sign(owner_key, self.to_json())
        return DatasetManifest.from_json(document)

    def write(self, store: BlobStore, container: str) -> DatasetRef:
        """Upload the manifest next to the shards (never over an existing version); where it lies."""
        body = json.dumps(self.to_json(), indent=2, sort_keys=True).encode()
        blob = self.blob_name(self.dataset_id, self.version)
        store.upload_stream(container, blob, io.BytesIO(body), length=len(body))
        return DatasetRef(container=container, manifest=blob)

    @staticmethod
    def latest_version(store: BlobStore, container: str, dataset_id: str) -> str:
        """The newest version of ``dataset_id`` (by the time its manifest was written)."""
        manifests = [info for info in store.list_blobs(container, f"{dataset_id}/")
                     if info.name.endswith("/manifest.json") and info.name.count("/") == 2]  # fmt: skip
        if not manifests:
            raise ManifestInvalid(f"dataset {dataset_id} has no sealed version in {container}: onboard it first")
        return max(manifests, key=lambda info: info.last_modified).name.split("/")[1]

    @classmethod
    def read(cls, store: BlobStore, container: str, blob: str) -> DatasetManifest:
        body = bytearray()
        for chunk in store.download_chunks(container, blob):
            body += chunk
            if len(body) > MAX_MANIFEST_BYTES:
                raise ManifestInvalid(f"{container}/{blob} is larger than {MAX_MANIFEST_BYTES} bytes: not a manifest")
        try:
            return cls.from_json(json.loads(body, parse_constant=_no_constant))
        except (ValueError, RecursionError) as exc:
            raise ManifestInvalid(f"{container}/{blob} is not a JSON manifest: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def new_manifest(
    dataset_id: str,
    version: str,
    kek_id: str,
    shards: Sequence[SealedShard],
    owner_key: Ed25519PrivateKey,
    *,
    columns: Columns | None = None,
) -> DatasetManifest:
    """The manifest of a freshly sealed dataset version (its label and feature ``columns``, when the owner names
    them), signed by the data owner."""
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return DatasetManifest(dataset_id, version, kek_id, tuple(shards), created, columns=columns).signed(owner_key)


def _metadata(context: Mapping[str, str]) -> dict[str, str]:
    # Blob metadata names must be C# identifiers; the context's keys are mapped, its values kept.
    return {f"context_{key.replace('-', '_').replace('.', '_')}": value for key, value in context.items()}
