"""``securetrain stack up | status | down``: the local stand-ins for Azure services."""

from __future__ import annotations

import argparse

from securetrain.localstack import ServiceState, StackConfig, down, status, up
from securetrain.localstack.cli import add_state_dir
from securetrain.localstack.emulated_platform import DEFAULT_PLATFORM, PLATFORM_ENV, EmulatedPlatform
from securetrain.localstack.errors import StackConfigurationError
from securetrain.localstack.emulated_platform import running_platform
from securetrain.localstack.stack_gpu import GPU_ENV, StackGpu
from securetrain.localstack.layout import StackLayout, resolve_state_dir
from securetrain.localstack.registry import ALL_SERVICES, PLATFORM_SERVICES

_SERVICES_HELP = "services: " + "; ".join(
    f"{service.name} ({service.description}, port {service.default_port}, {service.port_variable})"
    for service in ALL_SERVICES
) + ". Platforms: " + "; ".join(
    f"{platform.value}: {platform.description}, services {', '.join(service.name for service in services)}"
    for platform, services in PLATFORM_SERVICES.items()
)


def _port_assignment(text: str) -> tuple[str, int]:
    name, separator, port = text.partition("=")
    if not separator or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not SERVICE=PORT (e.g. azurite=10010)")
    return name, int(port)


def _config(
    args: argparse.Namespace, platform: EmulatedPlatform | None = None, gpu: StackGpu | None = None
) -> StackConfig:
    ports: dict[str, int] = {}
    for name, port in getattr(args, "port", None) or []:
        if name in ports:
            raise StackConfigurationError(f"--port gives {name} twice")
        ports[name] = port
    return StackConfig.resolve(args.state_dir, ports, platform=platform, gpu=gpu)


def _running_config(args: argparse.Namespace) -> StackConfig:
    """The configuration of the stack that runs in the state directory: on the platform it was brought up on."""
    return _config(args, running_platform(StackLayout(resolve_state_dir(args.state_dir))))


def _up(args: argparse.Namespace) -> int:
    platform = EmulatedPlatform(args.platform) if args.platform else None
    config = _config(args, platform, StackGpu(args.gpu) if args.gpu else None)
    up(config)
    gpu = " with the simulated H100 (GPU attested before any key)" if config.gpu is StackGpu.SIMULATED else ""
    print(f"stack is up on platform {config.platform.value}, {config.platform.description}{gpu}; "
          f"load its settings with: source {config.layout.env_file}")
    return 0


def _status(args: argparse.Namespace) -> int:
    config = _running_config(args)
    statuses = status(config)
    print(f"state directory: {config.layout.root}")
    running = "" if running_platform(config.layout) else " (not up; what `up` would start)"
    print(f"platform: {config.platform.value}, {config.platform.description}{running}")
    print(f"gpu: {config.gpu.value}")
    for entry in statuses:
        where = f" pid {entry.pid} {entry.url}" if entry.pid is not None else ""
        print(f"{entry.name:<12} {entry.state.value}{where}")
        if entry.detail:
            print(f"{'':<12} {entry.detail}")
        if entry.state in (ServiceState.DEAD, ServiceState.UNHEALTHY):
            print(f"{'':<12} log: {entry.log_file}")
    return 0 if all(entry.state is ServiceState.HEALTHY for entry in statuses) else 1


def _down(args: argparse.Namespace) -> int:
    stopped = down(_running_config(args))
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``stack`` and its sub-commands."""
    state = argparse.ArgumentParser(add_help=False)
    add_state_dir(state, "where the stack keeps its CA, certificates, logs, PID files and data")
    stack = subparsers.add_parser(
        "stack",
        help="start, check or stop the local stand-ins for Azure services",
        description="The local stack: stand-ins for Azure services as local processes speaking HTTPS with "
        "certificates from a local CA. See docs/local-stack.md.",
        epilog=_SERVICES_HELP,
    )
    commands = stack.add_subparsers(dest="stack_command", metavar="ACTION", required=True)

    up_parser = commands.add_parser(
        "up",
        parents=[state],
        help="start what is not running, wait until healthy, write stack.env",
        description="Make the local CA and certificates, start every service that is not running, wait until "
        "each answers its health check over verified HTTPS, then write <state>/stack.env (shell export "
        "lines: endpoints, CA bundle, Airflow connections). Running it again starts nothing new.",
        epilog=_SERVICES_HELP,
    )
    up_parser.add_argument(
        "--port",
        action="append",
        type=_port_assignment,
        metavar="SERVICE=PORT",
        help="listen on PORT instead of the default (repeatable); the environment variable "
        "SECURETRAIN_<SERVICE>_PORT does the same",
    )
    up_parser.add_argument(
        "--platform",
        choices=[platform.value for platform in EmulatedPlatform],
        help=f"the platform the local CVM runs on (default: ${PLATFORM_ENV}, else the platform the stack runs on "
        f"now, else {DEFAULT_PLATFORM.value}); a stack up on another platform is moved to this one",
    )
    up_parser.add_argument(
        "--gpu",
        choices=[gpu.value for gpu in StackGpu],
        help=f"the local CVM's GPU (default: ${GPU_ENV}, else the GPU of the stack that runs, else none). "
        "simulated: a simulated H100 the TEE must attest before any key, and the attestation service trusts; "
        "it changes the workload's measurement, so bring a stack up with it from the start",
    )
    up_parser.set_defaults(handler=_up)

    status_parser = commands.add_parser(
        "status",
        parents=[state],
        help="show each service: healthy, running but not healthy, dead, or stopped",
        description="Show each declared service's state. Exits 0 only when every service is healthy, 1 otherwise.",
    )
    status_parser.set_defaults(handler=_status)

    down_parser = commands.add_parser(
        "down",
        parents=[state],
        help="stop the processes the stack started (and nothing else)",
        description="Stop every process `stack up` started, verified by PID, start time and boot id so that a "
        "reused PID is never signalled: SIGTERM to its process group, then SIGKILL after a grace period. "
        "Removes PID files and stack.env. Harmless when nothing runs.",
    )
    down_parser.set_defaults(handler=_down)
