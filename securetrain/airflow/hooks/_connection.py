"""Reading a securetrain connection: its host as an https endpoint and the fields of its extra."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securetrain.core.errors import ConfigurationError


@dataclass(frozen=True)
class ServiceConnection:
    """An Airflow connection to one securetrain service: ``endpoint`` and its ``extra`` fields."""

    conn_id: str
    endpoint: str
    extra: dict[str, Any]

    @classmethod
    def of(cls, connection: Any) -> ServiceConnection:
        host = (connection.host or "").rstrip("/")
        if not host.startswith("https://"):
            raise ConfigurationError(
                f"connection {connection.conn_id!r}: host {host!r} is not an https URL; securetrain talks to its "
                "services over TLS only"
            )
        return cls(connection.conn_id, host, dict(connection.extra_dejson))

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
