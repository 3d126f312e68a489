"""The ``securetrain`` command line.

Each command group lives in its own module, in the zone it belongs to, with a ``register(subparsers)``
function that adds its sub-commands; a sub-command's handler takes the parsed arguments and returns an exit
code. The groups are found through the ``securetrain.commands`` entry points (pyproject.toml), so this
module imports no zone but the core. Errors the
product can explain (:class:`~securetrain.core.errors.SecuretrainError`) print one line naming the cause and
exit with the error's code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

from securetrain import __version__
from securetrain.core.errors import SecuretrainError
from securetrain.core.process_logging import configure_logging

COMMAND_GROUP_ENTRY_POINTS = "securetrain.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securetrain",
        description="Confidential ML training: sealed data, attested TEEs, Secure Key Release.",
    )
    parser.add_argument("--version", action="version", version=f"securetrain {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at debug level")
    parser.add_argument(
        "--settings", type=Path, default=None, metavar="FILE",
        help="a dotenv file of SECURETRAIN_* and AZURE_* settings (services, trust roots, identity) under the "
        "environment, which wins; see docs/deployment.md",
    )  # fmt: skip
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry_point in sorted(importlib.metadata.entry_points(group=COMMAND_GROUP_ENTRY_POINTS), key=lambda ep: ep.name):
        entry_point.load().register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("%(levelname)s %(name)s: %(message)s", verbose=args.verbose)
    try:
        return args.handler(args)
    except SecuretrainError as exc:
        print(f"securetrain {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
