"""The data owner's onboarding task: validate a dataset with Great Expectations, seal it, upload and publish it.

It runs in the data owner's zone (a worker on the ``data-owner`` queue in a Celery deployment), the one place
besides the TEE where plaintext may exist. :func:`publish_sealed_dataset` resolves what the owner's deployment
holds (the KEK's public key through the Key Vault connection, the storage connection, the owner's signing key
through the owner's connection) and hands them to the core's
:func:`~securetrain.core.dataset_publishing.publish_dataset`, the path ``securetrain dataset publish`` takes
too. Nothing plaintext goes into XCom, only names, digests and aggregate validation results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from securetrain.core.errors import ConfigurationError

DATA_OWNER_QUEUE = "data-owner"
#: The connection that holds the data owner's signing key (extra ``signing_key``: a PEM file path). Only the
#: data owner's own deployment or worker has it; the pipeline's Airflow does not (docs/security.md).
DATA_OWNER_CONN_ID = "securetrain_data_owner"


def publish_sealed_dataset(
    source: str,
    *,
    dataset_id: str,
    version: str,
    label: str,
    features: Sequence[str] | None,
    suite: Mapping[str, Any] | None,
    kek_name: str,
    shard_rows: int | None = None,
    data_owner_conn_id: str = DATA_OWNER_CONN_ID,
    storage_conn_id: str | None = None,
    keyvault_conn_id: str | None = None,
) -> dict[str, Any]:
    """Publish ``source`` (a bundled dataset's name, or a CSV or Parquet path) as ``dataset_id`` ``version``,
    sealed for the latest version of the KEK ``kek_name`` and signed with the key of ``data_owner_conn_id``;
    in shards of at most ``shard_rows`` rows (None: one); the summary (:class:`~securetrain.core.dataset_publishing.PublishedDataset`).

    A suite that fails fails the task at once: the same data would fail it again on a retry.
    """
    from airflow.sdk import BaseHook  # noqa: PLC0415
    from airflow.sdk.exceptions import AirflowFailException  # noqa: PLC0415

    from securetrain.airflow.hooks.keyvault import KeyVaultHook  # noqa: PLC0415
    from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415
    from securetrain.airflow.locations import DATASETS_CONTAINER  # noqa: PLC0415
    from securetrain.core.audit.checkpoints import load_signing_key  # noqa: PLC0415
    from securetrain.core.contracts.training import DataValidationFailed  # noqa: PLC0415
    from securetrain.core.dataset_publishing import publish_dataset  # noqa: PLC0415
    from securetrain.core.keyvault import KEY_VAULT_ERRORS, kek_public_key  # noqa: PLC0415

    key_file = BaseHook.get_connection(data_owner_conn_id).extra_dejson.get("signing_key")
    if not key_file:
        raise ConfigurationError(f"the connection {data_owner_conn_id} names no signing_key (the data owner's PEM key file)")
    owner_key = load_signing_key(Path(key_file))
    vault = KeyVaultHook(keyvault_conn_id or KeyVaultHook.default_conn_name)
    with KEY_VAULT_ERRORS.translated("read", f"KEK {kek_name}"), vault.client() as client:
        kek = kek_public_key(client.get_key(kek_name))
    with SecureStorageHook(storage_conn_id or SecureStorageHook.default_conn_name).blob_store() as store:
        try:
            published = publish_dataset(source, dataset_id=dataset_id, version=version, label=label, features=features,
                                        suite=suite, kek=kek, owner_key=owner_key, store=store,
                                        container=DATASETS_CONTAINER, shard_rows=shard_rows)  # fmt: skip
        except DataValidationFailed as exc:
            raise AirflowFailException(f"{dataset_id} {version} was not published: {exc}") from exc
    return published.to_json()
