"""Blob storage: the Azure provider's ``WasbHook`` and ``wasb`` connection, used through securetrain's BlobStore.

``get_conn()`` signs in as the provider does, whatever the connection holds: a connection string, a service
principal (login, password, extra ``tenant_id`` and ``client_secret_auth_config``), a SAS token, a shared
access key, the account key (password), or a managed or workload identity. :meth:`blob_store` is securetrain's
client on that account and credential: its TLS trust (extra ``connection_verify``: the CA bundle), bounded
retries, typed errors and refusal of public containers.
"""

from __future__ import annotations

from pathlib import Path

from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
from securetrain.core.storage import BlobStore


class SecureStorageHook(WasbHook):
    """``WasbHook`` plus :meth:`blob_store`."""

    default_conn_name = "securetrain_storage"

    def __init__(self, wasb_conn_id: str = default_conn_name) -> None:
        super().__init__(wasb_conn_id=wasb_conn_id)

    def blob_store(self) -> BlobStore:
        """A :class:`BlobStore` for the connection's account and identity; close it when done."""
        verify = self.get_connection(self.conn_id).extra_dejson.get("connection_verify")
        return BlobStore.for_client(self.get_conn(), ca_bundle=Path(verify) if isinstance(verify, str) else None)
