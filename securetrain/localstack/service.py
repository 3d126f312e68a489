"""How a local service is declared: a :class:`Service` is data, the launcher does the rest.

A service says how to build its command line and environment from a :class:`ServiceContext`, how to
tell that it is healthy, and what it adds to ``stack.env``. Adding a stand-in to the stack is adding
one :class:`Service` to :data:`securetrain.localstack.registry.SERVICES`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from securetrain.localstack.errors import StackConfigurationError, StackError
from securetrain.localstack.layout import StackLayout
from securetrain.localstack.process import PidRecord

#: How long a health check waits for an answer (the launcher polls again after it).
HEALTH_TIMEOUT_S = 3


class ServiceUnhealthy(StackError):
    """A health check got no satisfactory answer; the message says what it saw."""

    @classmethod
    def because(cls, exc: Exception) -> ServiceUnhealthy:
        """The health request failed with ``exc``: its type and the first line of its message."""
        return cls(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")


@dataclass(frozen=True)
class ServiceContext:
    """What a service's builders and health check are given: where it listens and where its files are."""

    name: str
    host: str
    port: int
    layout: StackLayout

    @property
    def base_url(self) -> str:
        """``https://host:port``: every stack service speaks HTTPS only."""
        return f"https://{self.host}:{self.port}"

    @property
    def ca_bundle(self) -> Path:
        """The stack CA certificate; health checks verify the service's certificate against it."""
        return self.layout.ca_bundle

    @property
    def cert_path(self) -> Path:
        """The service's TLS server certificate (issued by ``up`` before the service starts)."""
        return self.layout.server_certs_dir / f"{self.name}.pem"

    @property
    def key_path(self) -> Path:
        return self.layout.server_certs_dir / f"{self.name}.key"

    @property
    def data_dir(self) -> Path:
        return self.layout.data_dir(self.name)

    def running(self, service: Service) -> ServiceContext:
        """Where ``service``, which this one depends on (so it was started first), runs: from its PID record."""
        record = PidRecord.read(self.layout.pid_file(service.name))
        if record is None:
            raise StackConfigurationError(f"the {self.name} service needs {service.name} running; it has no PID record")
        return ServiceContext(service.name, record.host, record.port, self.layout)


def python_service_argv(module: str, context: ServiceContext, *options: str) -> list[str]:
    """The command line of a stand-in written in Python: ``python -m MODULE OPTIONS`` plus where it listens
    and its TLS certificate, which every such service takes the same way."""
    return [
        sys.executable, "-m", module, *options,
        "--host", context.host,
        "--port", str(context.port),
        "--cert", str(context.cert_path),
        "--key", str(context.key_path),
    ]  # fmt: skip


def check_openid_issuer(context: ServiceContext, metadata_url: str, issuer: str) -> None:
    """Health check of a token issuer: its OpenID metadata at ``metadata_url`` answers over TLS verified with
    the stack CA and names ``issuer`` (one that names another would make every token it signs fail validation)."""
    try:
        response = requests.get(metadata_url, verify=str(context.ca_bundle), timeout=HEALTH_TIMEOUT_S)
        response.raise_for_status()
        seen = response.json().get("issuer")
    except (requests.RequestException, ValueError) as exc:
        raise ServiceUnhealthy.because(exc) from exc
    if seen != issuer:
        raise ServiceUnhealthy(f"the service says its issuer is {seen!r}, expected {issuer}")


def _nothing(_: ServiceContext) -> Mapping[str, str]:
    return {}


@dataclass(frozen=True)
class Service:
    """A local stand-in the stack runs.

    Attributes:
        name: short lower-case name; used for files (``logs/<name>.log``) and options (``--port name=N``).
        description: one line for ``status`` and the docs.
        default_port: the port it listens on unless ``--port`` or ``SECURETRAIN_<NAME>_PORT`` says otherwise.
        argv: builds the command line. May raise :class:`~securetrain.localstack.errors.ToolNotInstalled`.
        health_check: returns when the service answers correctly over HTTPS verified against the stack CA,
            raises :class:`ServiceUnhealthy` otherwise. Called repeatedly while the service starts.
        environment: variables added to the service's environment (on top of the caller's).
        exports: what ``stack.env`` gets so that clients can reach the service.
        depends_on: names of services that must be healthy before this one starts.
        startup_timeout_s: how long ``up`` waits for the service to become healthy.
        scheme: how clients reach it, for ``status``: ``https`` (every stand-in), ``tcp`` (the emulated vTPM).
    """

    name: str
    description: str
    default_port: int
    argv: Callable[[ServiceContext], Sequence[str]]
    health_check: Callable[[ServiceContext], None]
    environment: Callable[[ServiceContext], Mapping[str, str]] = _nothing
    exports: Callable[[ServiceContext], Mapping[str, str]] = _nothing
    depends_on: tuple[str, ...] = ()
    startup_timeout_s: float = 30.0
    scheme: str = "https"

    @property
    def port_variable(self) -> str:
        """The environment variable that overrides the default port, e.g. ``SECURETRAIN_AZURITE_PORT``."""
        return f"SECURETRAIN_{self.name.upper().replace('-', '_')}_PORT"
