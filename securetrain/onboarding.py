"""The data owner's side: seal a dataset for the KEK's public key and put the sealed shard in storage.

This runs where plaintext is allowed (the data owner's zone): the plaintext is sealed in memory and only
ciphertext is uploaded. The blob's metadata names the dataset, its plaintext digest and the KEK, so the
pipeline's data-security check can compare them with the sealed header without decrypting anything.
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

from securetrain.errors import ConfigurationError
from securetrain.sealed import KekPublicKey, seal
from securetrain.storage import BlobStore

log = logging.getLogger(__name__)


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

    def job_dataset(self) -> dict[str, object]:
        """This shard as a job spec's ``datasets`` entry."""
        return {"container": self.container, "blob": self.blob, "format": self.format, "context": dict(self.context)}


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

    The seal context is bound into the header: the trainer refuses a shard whose context differs from the
    one its job names, so a shard cannot be swapped for another file sealed to the same KEK.
    """
    digest = hashlib.sha256(plaintext).hexdigest()
    sealed = io.BytesIO()
    seal(io.BytesIO(plaintext), sealed, kek, {**context, "format": file_format})
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
        context={**context, "format": file_format},
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

    Stored as ``<dataset id>/<version>/manifest.json`` beside the shards; the pipeline's data-security
    check compares every shard's sealed header and blob with it before anything is trained.
    """

    dataset_id: str
    version: str
    kek_id: str
    shards: Sequence[SealedShard]
    created_at: str = ""

    @staticmethod
    def blob_name(dataset_id: str, version: str) -> str:
        return f"{dataset_id}/{version}/manifest.json"

    def to_json(self) -> dict[str, Any]:
        return {"dataset_id": self.dataset_id, "version": self.version, "kek_id": self.kek_id,
                "created_at": self.created_at, "shards": [shard.to_json() for shard in self.shards]}  # fmt: skip

    @classmethod
    def from_json(cls, document: Any) -> DatasetManifest:
        if not isinstance(document, Mapping) or not isinstance(document.get("shards"), list) or not document["shards"]:
            raise ManifestInvalid("a dataset manifest is a JSON object with a non-empty list of shards")
        try:
            return cls(str(document["dataset_id"]), str(document["version"]), str(document["kek_id"]),
                       tuple(SealedShard.from_json(shard) for shard in document["shards"]),
                       str(document.get("created_at", "")))  # fmt: skip
        except KeyError as exc:
            raise ManifestInvalid(f"the dataset manifest lacks {exc.args[0]}") from None

    def write(self, store: BlobStore, container: str) -> str:
        """Upload the manifest next to the shards (never over an existing version); its blob name."""
        body = json.dumps(self.to_json(), indent=2, sort_keys=True).encode()
        blob = self.blob_name(self.dataset_id, self.version)
        store.upload_stream(container, blob, io.BytesIO(body), length=len(body))
        return blob

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
        try:
            return cls.from_json(json.loads(b"".join(store.download_chunks(container, blob))))
        except ValueError as exc:
            raise ManifestInvalid(f"{container}/{blob} is not JSON: {exc}") from None


def new_manifest(dataset_id: str, version: str, kek_id: str, shards: Sequence[SealedShard]) -> DatasetManifest:
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return DatasetManifest(dataset_id, version, kek_id, tuple(shards), created)


def _metadata(context: Mapping[str, str]) -> dict[str, str]:
    # Blob metadata names must be C# identifiers; the context's keys are mapped, its values kept.
    return {f"context_{key.replace('-', '_').replace('.', '_')}": value for key, value in context.items()}
