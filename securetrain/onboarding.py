"""The data owner's side: seal a dataset for the KEK's public key and put the sealed shard in storage.

This runs where plaintext is allowed (the data owner's zone): the plaintext is sealed in memory and only
ciphertext is uploaded. The blob's metadata names the dataset, its plaintext digest and the KEK, so the
pipeline's data-security check can compare them with the sealed header without decrypting anything.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass

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


def _metadata(context: Mapping[str, str]) -> dict[str, str]:
    # Blob metadata names must be C# identifiers; the context's keys are mapped, its values kept.
    return {f"context_{key.replace('-', '_').replace('.', '_')}": value for key, value in context.items()}
