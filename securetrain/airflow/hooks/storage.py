"""Blob storage: the Azure provider's ``WasbHook`` connection, used through securetrain's BlobStore.

The connection is the provider's ``wasb`` type, so it is configured like any Azure storage connection; the
hook adds :meth:`blob_store`, securetrain's streaming client with its bounded retries, typed errors and
refusal of public containers. With an account key (login/password) it uses it (Azurite); without one,
``DefaultAzureCredential``.
"""

from __future__ import annotations

from pathlib import Path

from azure.core.credentials import AzureNamedKeyCredential

from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
from securetrain.core.errors import ConfigurationError
from securetrain.core.storage import BlobStore


class SecureStorageHook(WasbHook):
    """``WasbHook`` plus :meth:`blob_store`."""

    default_conn_name = "securetrain_storage"

    def __init__(self, wasb_conn_id: str = default_conn_name) -> None:
        super().__init__(wasb_conn_id=wasb_conn_id)

    def blob_store(self) -> BlobStore:
        """A :class:`BlobStore` for the connection's account; close it when done."""
        connection = self.get_connection(self.conn_id)
        account_url = (connection.host or "").rstrip("/")
        if not account_url.startswith("https://"):
            raise ConfigurationError(f"connection {self.conn_id!r}: host {account_url!r} is not an https account URL")
        verify = connection.extra_dejson.get("connection_verify")
        ca_bundle = Path(verify) if isinstance(verify, str) else None
        if connection.login and connection.password:
            return BlobStore(account_url, AzureNamedKeyCredential(connection.login, connection.password),
                             ca_bundle=ca_bundle)  # fmt: skip
        from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - only Azure needs it

        return BlobStore(account_url, DefaultAzureCredential(), ca_bundle=ca_bundle)
