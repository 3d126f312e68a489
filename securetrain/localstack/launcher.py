"""``up``, ``status`` and ``down`` for the local stack (docs/local-stack.md).

``up`` is idempotent: it starts what does not run, in dependency order, restarts a service whose command line,
environment or certificate would now differ, and writes ``stack.env`` only once every service is healthy.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from securetrain.localstack.data_owner import stack_owner_keys
from securetrain.localstack.pki import LocalCA
from securetrain.localstack.envfile import write_stack_env
from securetrain.localstack.settings import settings_path, write_settings_files
from securetrain.localstack.errors import PortInUse, ServiceStartFailed, StackConfigurationError
from securetrain.localstack.layout import StackLayout, repo_root, resolve_state_dir, write_file
from securetrain.localstack.process import PidRecord, ProcessIdentity, start_process, stop_process
from securetrain.localstack.emulated_platform import DEFAULT_PLATFORM, PLATFORM_ENV, EmulatedPlatform, running_platform
from securetrain.localstack.registry import ALL_SERVICES, SERVICES, services_for, start_order
from securetrain.localstack.service import Service, ServiceContext, ServiceUnhealthy
from securetrain.localstack.services.attestation import ATTESTATION
from securetrain.localstack.stack_gpu import StackGpu, chosen_gpu, requirement_file, write_requirement

logger = logging.getLogger(__name__)

_HEALTH_POLL_INTERVAL_S = 0.2
_PORT_RELEASE_WAIT_S = 3.0
_LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class StackConfig:
    """Which state directory, which platform, which services and which ports. Build it with :meth:`resolve`."""

    layout: StackLayout
    ports: Mapping[str, int]
    services: tuple[Service, ...] = SERVICES
    host: str = "127.0.0.1"
    platform: EmulatedPlatform = DEFAULT_PLATFORM
    #: The local CVM's GPU (:mod:`securetrain.localstack.stack_gpu`).
    gpu: StackGpu = StackGpu.NONE

    @classmethod
    def resolve(
        cls,
        state_dir: Path | None = None,
        ports: Mapping[str, int] | None = None,
        services: Sequence[Service] | None = None,
        platform: EmulatedPlatform | None = None,
        gpu: StackGpu | None = None,
    ) -> StackConfig:
        """Resolve the state directory (see :func:`~securetrain.localstack.layout.resolve_state_dir`), the platform
        (``platform`` if given, else ``$SECURETRAIN_PLATFORM``, else the one the stack in that directory runs, else
        :data:`~securetrain.localstack.emulated_platform.DEFAULT_PLATFORM`), its services unless ``services`` are
        given, and each service's port: ``ports[name]`` if given, else ``$SECURETRAIN_<NAME>_PORT``, else its default;
        the CVM's GPU likewise (:func:`~securetrain.localstack.stack_gpu.chosen_gpu`).

        Raises:
            StackConfigurationError: a port is not a number in 1..65535, ``ports`` names an unknown service, or
                the platform is not one the stack knows.
        """
        layout = StackLayout(resolve_state_dir(state_dir))
        if platform is None:
            chosen = os.environ.get(PLATFORM_ENV)
            platform = EmulatedPlatform.named(chosen, PLATFORM_ENV) if chosen else running_platform(layout)
        platform = platform or DEFAULT_PLATFORM
        services = services_for(platform) if services is None else services
        explicit = dict(ports or {})
        unknown = sorted(set(explicit) - {service.name for service in services})
        if unknown:
            known = ", ".join(service.name for service in services)
            raise StackConfigurationError(f"no stack service named {', '.join(unknown)} (services: {known})")
        resolved: dict[str, int] = {}
        for service in services:
            port: int | str
            if service.name in explicit:
                port, source = explicit[service.name], f"the port given for {service.name}"
            elif os.environ.get(service.port_variable):
                port, source = os.environ[service.port_variable], service.port_variable
            else:
                port, source = service.default_port, "the default"
            resolved[service.name] = _valid_port(port, source)
        return cls(layout, resolved, tuple(services), platform=platform, gpu=chosen_gpu(layout, gpu))

    def context(self, service: Service) -> ServiceContext:
        """The context ``service`` is started with under this configuration."""
        return ServiceContext(service.name, self.host, self.ports[service.name], self.layout)


def _valid_port(value: int | str, source: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise StackConfigurationError(f"{source} is {value!r}: a port must be a number from 1 to 65535")
    return port


class ServiceState(enum.Enum):
    """What ``status`` found for a service."""

    HEALTHY = "healthy"
    UNHEALTHY = "running, not healthy"
    DEAD = "dead"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ServiceStatus:
    """One service's state, with the PID, URL and log a user needs to look further."""

    name: str
    state: ServiceState
    log_file: Path
    pid: int | None = None
    url: str | None = None
    detail: str = field(default="")


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(f"    {line}" for line in lines)


@contextlib.contextmanager
def _stack_lock(layout: StackLayout) -> Iterator[None]:
    """Hold the stack lock so that two `up`/`down` runs in one state directory never interleave."""
    layout.create()
    with open(layout.lock_file, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another `securetrain stack` command is changing %s: waiting for it", layout.root)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _probe(service: Service, context: ServiceContext) -> str | None:
    """None when the service is healthy, else what its health check saw."""
    try:
        service.health_check(context)
    except ServiceUnhealthy as exc:
        return str(exc)
    return None


def _status_of(service: Service, config: StackConfig) -> tuple[ServiceStatus, PidRecord | None]:
    log_file = config.layout.log_file(service.name)
    record = PidRecord.read(config.layout.pid_file(service.name))
    if record is None:
        return ServiceStatus(service.name, ServiceState.STOPPED, log_file), None
    pid = record.process.pid
    url = f"{service.scheme}://{record.host}:{record.port}"
    if not record.process.is_running():
        now = ProcessIdentity.of(pid)
        gone = "no process has that PID now" if now is None else "that PID now belongs to another process"
        detail = f"it exited or was killed ({gone}); its log may say why"
        return ServiceStatus(service.name, ServiceState.DEAD, log_file, pid, url, detail), record
    context = ServiceContext(service.name, record.host, record.port, config.layout)
    problem = _probe(service, context)
    if problem is None:
        return ServiceStatus(service.name, ServiceState.HEALTHY, log_file, pid, url), record
    return ServiceStatus(service.name, ServiceState.UNHEALTHY, log_file, pid, url, problem), record


def status(config: StackConfig) -> list[ServiceStatus]:
    """The state of every declared service, in start order. Reads only; starts and stops nothing."""
    return [_status_of(service, config)[0] for service in start_order(config.services)]


def _fingerprint(argv: Sequence[str], environment: Mapping[str, str], certificate_pem: bytes) -> str:
    material = json.dumps({"argv": list(argv), "environment": dict(environment)}, sort_keys=True).encode()
    return hashlib.sha256(material + certificate_pem).hexdigest()


def _check_port_free(service: Service, context: ServiceContext) -> None:
    # A service that has just died may hold its listening socket for a moment after it exited (the
    # kernel tears it down asynchronously): wait briefly before blaming another program.
    deadline = time.monotonic() + _PORT_RELEASE_WAIT_S
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # Node.js listens with SO_REUSEADDR too, so a port held only by connections in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((context.host, context.port))
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                error = exc
        raise PortInUse(
            f"cannot start {service.name}: port {context.port} on {context.host} is in use by a process "
            f"this stack did not start; stop it, or choose another port with `--port "
            f"{service.name}=PORT` or {service.port_variable}"
        ) from error


def _wait_healthy(service: Service, context: ServiceContext, process: ProcessIdentity) -> float:
    """Seconds until ``service`` answered its health check; raises if it exits or runs out of time."""
    log_file = context.layout.log_file(service.name)
    started = time.monotonic()
    deadline = started + service.startup_timeout_s
    while True:
        problem = _probe(service, context)
        if problem is None:
            return time.monotonic() - started
        if not process.is_running():
            raise ServiceStartFailed(
                f"{service.name} exited while starting (last health check: {problem}); "
                f"the end of {log_file}:\n{_log_tail(log_file)}"
            )
        if time.monotonic() >= deadline:
            raise ServiceStartFailed(
                f"{service.name} (pid {process.pid}) was not healthy within {service.startup_timeout_s:.0f} s "
                f"(last health check: {problem}); the end of {log_file}:\n{_log_tail(log_file)}"
            )
        time.sleep(_HEALTH_POLL_INTERVAL_S)


def _stop(service: Service, config: StackConfig, record: PidRecord) -> None:
    if stop_process(record.process):
        logger.info("stopped %s (pid %d)", service.name, record.process.pid)
    config.layout.pid_file(service.name).unlink(missing_ok=True)


def _bring_up(service: Service, config: StackConfig, ca: LocalCA) -> None:
    context = config.context(service)
    certificate = ca.issue_server_certificate(config.layout.server_certs_dir, service.name)
    argv = service.argv(context)
    environment = service.environment(context)
    fingerprint = _fingerprint(argv, environment, certificate.cert_path.read_bytes())

    current, record = _status_of(service, config)
    if record is not None and current.state is not ServiceState.DEAD:
        if record.fingerprint == fingerprint:
            if current.state is ServiceState.HEALTHY:
                logger.info("%s already running (pid %d) and healthy", service.name, record.process.pid)
                return
            # Perhaps still starting (another `up` was interrupted): give it its start-up time.
            waited = _wait_healthy(service, context, record.process)
            logger.info("%s (pid %d) healthy after %.1f s", service.name, record.process.pid, waited)
            return
        logger.info(
            "%s runs with another port, certificate or arguments than now asked for: restarting it", service.name
        )
        _stop(service, config, record)
    elif record is not None:
        logger.warning(
            "%s was dead (pid %d): starting it again; %s may say why it stopped",
            service.name,
            record.process.pid,
            current.log_file,
        )
        config.layout.pid_file(service.name).unlink()

    _check_port_free(service, context)
    logger.info("starting %s on %s ...", service.name, context.base_url)
    process = start_process(argv, {**os.environ, **environment}, config.layout.log_file(service.name), repo_root())
    started = PidRecord(process, context.host, context.port, fingerprint, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    started.write(config.layout.pid_file(service.name))
    try:
        waited = _wait_healthy(service, context, process)
    except ServiceStartFailed:
        _stop(service, config, started)
        raise
    logger.info("%s healthy in %.1f s (pid %d)", service.name, waited, process.pid)


def _stop_other_platforms(config: StackConfig) -> None:
    """Stop what only another platform runs (the vTPM and IMDS when the stack moves to ``snp``)."""
    ours = {service.name for service in services_for(config.platform)}
    for service in reversed(start_order(ALL_SERVICES)):
        record = PidRecord.read(config.layout.pid_file(service.name))
        if service.name not in ours and record is not None:
            logger.info("%s is not part of the %s platform: stopping it", service.name, config.platform.value)
            _stop(service, config, record)


def up(config: StackConfig) -> dict[str, str]:
    """Bring the stack up and return what was written to ``stack.env``.

    Raises:
        ServiceStartFailed: a service exited or stayed unhealthy (the error quotes the end of its log);
            services started before it keep running (``down`` stops them).
        PortInUse, ToolNotInstalled, StackConfigurationError: the stack cannot be started as configured.
    """
    with _stack_lock(config.layout):
        try:
            _stop_other_platforms(config)
            write_file(config.layout.platform_file, f"{config.platform.value}\n".encode(), mode=0o600)
            # Before any service measures the workload: the TEE's GPU requirement is part of it.
            attestation = config.context(ATTESTATION).base_url if ATTESTATION.name in config.ports else None
            write_requirement(config.layout, config.gpu, attestation)
            ca = LocalCA.load_or_create(config.layout.ca_dir)
            # Every data owner's key before any service measures the workload that trusts them.
            stack_owner_keys(config.layout)
            exports = {
                "SECURETRAIN_STATE_DIR": str(config.layout.root),
                "SECURETRAIN_CA_BUNDLE": str(ca.cert_path),
                PLATFORM_ENV: config.platform.value,
            }
            logger.info("the stack's platform: %s, %s; GPU: %s", config.platform.value, config.platform.description,
                        config.gpu.value)  # fmt: skip
            for service in start_order(config.services):
                _bring_up(service, config, ca)
                exports.update(service.exports(config.context(service)))
        except BaseException:
            # An old stack.env may name ports or services that no longer answer: better none than a wrong one.
            config.layout.env_file.unlink(missing_ok=True)
            raise
        write_stack_env(config.layout.env_file, exports)
        write_settings_files(exports, config.layout)
    logger.info("stack is up; its services in %s, each application's settings in %s", config.layout.env_file,
                settings_path(config.layout, "<identity>"))
    return exports


def down(config: StackConfig) -> list[str]:
    """Stop every service the stack started, in reverse start order; return the names of those stopped.

    Only processes named by a PID file whose PID, start time and boot id still match are signalled; PID
    files of dead services are removed. Harmless when nothing runs.
    """
    stopped: list[str] = []
    if not config.layout.root.exists():
        return stopped
    ours = reversed(start_order(config.services))
    # Then whatever else some platform runs and has a PID record: a stack brought up on another platform than
    # the one resolved now leaves no process behind.
    others = [service for service in reversed(start_order(ALL_SERVICES))
              if service.name not in {mine.name for mine in config.services}]  # fmt: skip
    with _stack_lock(config.layout):
        for service in (*ours, *others):
            record = PidRecord.read(config.layout.pid_file(service.name))
            if record is None:
                continue
            if record.process.is_running():
                stopped.append(service.name)
            else:
                logger.info(
                    "%s was not running (pid %d is gone): removing its PID file", service.name, record.process.pid
                )
            _stop(service, config, record)
        config.layout.env_file.unlink(missing_ok=True)
        config.layout.platform_file.unlink(missing_ok=True)
        requirement_file(config.layout).unlink(missing_ok=True)
    return stopped
