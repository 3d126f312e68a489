"""``securetrain demo``: run the end-to-end demo on the local stack (what ``make demo`` runs)."""

from __future__ import annotations

import argparse

from securetrain.localstack.cli import add_state_dir


def _demo(args: argparse.Namespace) -> int:
    from securetrain.localstack import demo  # deferred: it imports Airflow's environment helpers and the Azure SDKs

    demo.run(args.state_dir)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the secure training DAG end to end on the local stack",
        description="Bring up the local stack, onboard the bundled breast-cancer data as a sealed dataset "
        "(`airflow dags test data_onboarding`), run `airflow dags test secure_training` and print a summary "
        "read back from the model registry and the audit log. Safe to run again.",
    )
    add_state_dir(parser, "the stack's state directory")
    parser.set_defaults(handler=_demo)
