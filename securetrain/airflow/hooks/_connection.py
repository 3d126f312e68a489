"""Reading a securetrain connection: its host as an https endpoint, the fields of its extra, its identity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securetrain.core.credentials import ClosableCredential, azure_credential
from securetrain.core.errors import ConfigurationError


@dataclass(frozen=True)
class ServiceConnection:
    """An Airflow connection to one securetrain service: ``endpoint``, its ``extra`` fields, and its identity
    as the Azure provider's connections give it (``login``: a service principal's client id, ``password``:
    its secret)."""

    conn_id: str
    endpoint: str
    extra: dict[str, Any]
    login: str | None = None
    password: str | None = None

    @classmethod
    def of(cls, connection: Any) -> ServiceConnection:
        host = (connection.host or "").rstrip("/")
        if not host.startswith("https://"):
            raise ConfigurationError(
                f"connection {connection.conn_id!r}: host {host!r} is not an https URL; securetrain talks to its "
                "services over TLS only"
            )
        return cls(connection.conn_id, host, dict(connection.extra_dejson), connection.login or None,
                   connection.password or None)  # fmt: skip

    def optional(self, name: str) -> str | None:
        value = self.extra.get(name)
        return str(value) if value not in (None, "") else None

    def required(self, name: str) -> str:
        value = self.optional(name)
        if value is None:
            raise ConfigurationError(f"connection {self.conn_id!r} lacks the extra field {name!r}")
        return value

    def file(self, name: str) -> Path | None:
        """The extra field ``name`` as a path that must name an existing file (None when unset)."""
        value = self.optional(name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_file():
            raise ConfigurationError(f"connection {self.conn_id!r}: {name} {path} is not a file")
        return path

    @property
    def ca_bundle(self) -> Path | None:
        return self.file("ca_bundle")

    @property
    def tls_verify(self) -> str | bool:
        """The CA bundle as azure-core's ``connection_verify`` and requests' ``verify`` take it, or True."""
        ca_bundle = self.ca_bundle
        return str(ca_bundle) if ca_bundle is not None else True

    def credential(self) -> ClosableCredential:
        """The connection's identity: a service principal (login, password, extra ``tenant_id``, optionally
        ``authority_host``), else ``DefaultAzureCredential`` with the extra's ``managed_identity_client_id`` (a
        user-assigned managed identity) and ``workload_identity_tenant_id``. Extra ``disable_instance_discovery``
        true is for an authority that is not a Microsoft cloud (the local identity stand-in)."""
        return azure_credential(
            client_id=self.login,
            client_secret=self.password,
            tenant_id=self.optional("tenant_id"),
            authority_host=self.optional("authority_host"),
            managed_identity_client_id=self.optional("managed_identity_client_id"),
            workload_identity_tenant_id=self.optional("workload_identity_tenant_id"),
            verify=self.tls_verify,
            instance_discovery=str(self.extra.get("disable_instance_discovery", "")).lower() not in ("true", "1"),
        )
