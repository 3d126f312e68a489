"""``securetrain airflow env | run | standalone``: the local Airflow environment of a state directory.

See :mod:`securetrain.localstack.airflow_env` for what the environment holds and docs/airflow.md for the UI.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import NoReturn

from securetrain.localstack.airflow_env import (
    API_PORT_ENV,
    DEFAULT_API_PORT,
    AirflowEnvironmentError,
    airflow_environment,
    exec_standalone,
    migrate,
    run_airflow,
)
from securetrain.localstack.cli import add_state_dir
from securetrain.localstack.layout import resolve_state_dir


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _api_port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return args.port
    from_environment = os.environ.get(API_PORT_ENV)
    if from_environment is None:
        return DEFAULT_API_PORT
    try:
        return _port(from_environment)
    except argparse.ArgumentTypeError as exc:
        raise AirflowEnvironmentError(f"{API_PORT_ENV}: {exc}") from None


def _env(args: argparse.Namespace) -> int:
    environment = airflow_environment(
        resolve_state_dir(args.state_dir), api_port=_api_port(args), dags_folder=args.dags_folder
    )
    for name in sorted(environment):
        print(f"export {name}={shlex.quote(environment[name])}")
    return 0


def _run(args: argparse.Namespace) -> int:
    state_dir = resolve_state_dir(args.state_dir)
    airflow_args = args.airflow_args[1:] if args.airflow_args[:1] == ["--"] else args.airflow_args
    if not airflow_args:
        raise AirflowEnvironmentError("give the airflow command to run after --, e.g. `run -- dags list`")
    migrate(state_dir)
    return run_airflow(state_dir, airflow_args, api_port=_api_port(args), dags_folder=args.dags_folder).returncode


def _standalone(args: argparse.Namespace) -> NoReturn:
    exec_standalone(resolve_state_dir(args.state_dir), api_port=_api_port(args), dags_folder=args.dags_folder)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``airflow`` and its sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    add_state_dir(common, "the local stack's state directory; Airflow lives in DIR/airflow")
    common.add_argument(
        "--port",
        type=_port,
        metavar="PORT",
        help=f"the API server's (UI's) port on 127.0.0.1 (default: ${API_PORT_ENV}, else {DEFAULT_API_PORT})",
    )
    common.add_argument(
        "--dags-folder",
        type=Path,
        metavar="DIR",
        help="read DAGs from DIR instead of the repository's dags/",
    )
    group = subparsers.add_parser(
        "airflow",
        help="the local Airflow: environment, commands, the UI",
        description="A local Airflow installation in the stack's state directory: SQLite metadata database, "
        "this repository's DAGs and plugin, connections from stack.env, SimpleAuthManager with user "
        "'admin'. The stack must be up (`securetrain stack up`). See docs/airflow.md.",
    )
    commands = group.add_subparsers(dest="airflow_command", metavar="ACTION", required=True)

    env = commands.add_parser(
        "env",
        parents=[common],
        help="print the environment as shell export lines",
        description="Print the variables Airflow runs with (AIRFLOW_HOME, AIRFLOW__*, AIRFLOW_CONN_*, stack.env) "
        "as export lines: `eval \"$(securetrain airflow env)\"` and then plain `airflow ...` works. "
        "The output holds the storage account key, like stack.env.",
    )
    env.set_defaults(handler=_env)

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run an airflow command in the environment",
        description="Migrate the metadata database if needed, then run `airflow ARGS` with the environment "
        "and exit with its exit code.",
        epilog="example: securetrain airflow run -- dags test secure_training",
    )
    run.add_argument("airflow_args", nargs=argparse.REMAINDER, metavar="-- ARGS", help="the airflow command line")
    run.set_defaults(handler=_run)

    standalone = commands.add_parser(
        "standalone",
        parents=[common],
        help="start the Airflow UI and everything behind it (Ctrl-C stops it)",
        description="Migrate the metadata database if needed, print the UI's URL and where the admin "
        "password is, then become `airflow standalone`: api-server (UI and the Secure training page), "
        "scheduler, dag-processor and triggerer, in the foreground.",
    )
    standalone.set_defaults(handler=_standalone)
