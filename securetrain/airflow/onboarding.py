"""The data owner's stages: validate plaintext with Great Expectations, then seal, upload and publish.

They run in the data owner's zone (a worker on the ``data-owner`` queue in a Celery deployment), the one
place besides the TEE where plaintext may exist; nothing plaintext goes into XCom, only digests and
aggregate validation results.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from securetrain.core.errors import ConfigurationError

DATA_OWNER_QUEUE = "data-owner"
#: The connection that holds the data owner's signing key (extra ``signing_key``: a PEM file path). Only the
#: data owner's own deployment or worker has it; the pipeline's Airflow does not (docs/security.md).
DATA_OWNER_CONN_ID = "securetrain_data_owner"


def load_plaintext(source: str) -> bytes:
    """The dataset as Parquet bytes: a bundled demo dataset by name, or a Parquet file by path."""
    from securetrain.core.datasets import BUNDLED, bundled_table, to_parquet  # noqa: PLC0415 - scikit-learn is slow

    if source in BUNDLED:
        return to_parquet(bundled_table(source))
    path = Path(source)
    if not path.is_file():
        raise ConfigurationError(f"data source {source!r} is neither a bundled dataset ({', '.join(BUNDLED)}) nor a file")
    return path.read_bytes()


def validate_plaintext(source: str, suite: dict[str, Any]) -> dict[str, Any]:
    """Run ``suite`` on the plaintext; its aggregates and the plaintext's SHA-256 (raises if it fails)."""
    import io  # noqa: PLC0415

    import pyarrow.parquet as pq  # noqa: PLC0415

    from securetrain.core.validation import validate  # noqa: PLC0415 - the TEE's own validation, same rules

    plaintext = load_plaintext(source)
    aggregates = validate(suite, pq.read_table(io.BytesIO(plaintext)).to_pandas())
    return {"plaintext_sha256": hashlib.sha256(plaintext).hexdigest(), "validation": aggregates}


def publish_sealed_dataset(
    dataset_id: str,
    version: str,
    source: str,
    validated_sha256: str,
    *,
    kek_name: str | None = None,
    storage_conn_id: str | None = None,
    keyvault_conn_id: str | None = None,
    data_owner_conn_id: str = DATA_OWNER_CONN_ID,
) -> dict[str, Any]:
    """Seal ``source`` for the KEK's latest version, upload it and its owner-signed manifest; its summary.

    The plaintext must be the one validated (same SHA-256): a source that changed in between is refused.
    """
    from airflow.sdk import BaseHook  # noqa: PLC0415

    from securetrain.core.audit.checkpoints import load_signing_key  # noqa: PLC0415
    from securetrain.airflow.hooks.keyvault import KeyVaultHook  # noqa: PLC0415
    from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415
    from securetrain.airflow.locations import DATASETS_CONTAINER  # noqa: PLC0415
    from securetrain.core.keyvault import KEK_NAME, kek_public_key  # noqa: PLC0415
    from securetrain.core.onboarding import new_manifest, seal_and_upload  # noqa: PLC0415

    plaintext = load_plaintext(source)
    digest = hashlib.sha256(plaintext).hexdigest()
    if digest != validated_sha256:
        raise ConfigurationError(f"{source} changed since it was validated (sha256 {digest}, validated {validated_sha256})")
    key_file = BaseHook.get_connection(data_owner_conn_id).extra_dejson.get("signing_key")
    if not key_file:
        raise ConfigurationError(f"the connection {data_owner_conn_id} names no signing_key (the data owner's PEM key file)")
    owner_key = load_signing_key(Path(key_file))
    vault = KeyVaultHook(keyvault_conn_id or KeyVaultHook.default_conn_name)
    with vault.get_conn() as client:
        kek = kek_public_key(client.get_key(kek_name or KEK_NAME))
    with SecureStorageHook(storage_conn_id or SecureStorageHook.default_conn_name).blob_store() as store:
        shard = seal_and_upload(plaintext, kek=kek, store=store, container=DATASETS_CONTAINER,
                                blob=f"{dataset_id}/{version}/shard-00000.parquet.sealed", file_format="parquet",
                                context={"dataset_id": dataset_id, "version": version})  # fmt: skip
        manifest = new_manifest(dataset_id, version, kek.kek_id, [shard], owner_key)
        ref = manifest.write(store, DATASETS_CONTAINER)
    return {"dataset_id": dataset_id, "version": version, "kek_id": kek.kek_id,
            "manifest_blob": f"{ref.container}/{ref.manifest}", "shards": 1, "sealed_bytes": shard.sealed_bytes}  # fmt: skip
