"""``securetrain cvm measure``: the HOST_DATA digest of the installed trainer, for release policies.

HOST_DATA is SHA-256 of the workload manifest (``trainer.workload``): every file of the trainer package
with its SHA-256, and the trainer's fixed configuration. A policy that pins it refuses the key to a
trainer in which one byte changed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from securetrain.errors import ConfigurationError
from trainer.workload import host_data, manifest


def _measure(args: argparse.Namespace) -> int:
    root: Path | None = args.trainer_dir
    if root is not None and not (root / "__init__.py").is_file():
        raise ConfigurationError(f"{root} is not a trainer package directory (it has no __init__.py)")
    if args.manifest:
        print(json.dumps(manifest(root), indent=2, sort_keys=True))
    else:
        print(host_data(root).hex())
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser("cvm", help="the confidential VM's workload: measure the trainer")
    commands = group.add_subparsers(dest="cvm_command", metavar="COMMAND", required=True)
    measure = commands.add_parser(
        "measure",
        help="print the trainer's HOST_DATA digest (hex)",
        description="Print HOST_DATA: SHA-256 of the trainer's workload manifest. Pin it in the appraisal "
        "and release policies; a trainer that differs in one byte reports another value and gets no key.",
        epilog="exit codes: 0 printed, 2 bad argument",
    )
    measure.add_argument("--manifest", action="store_true", help="print the manifest JSON instead of its digest")
    measure.add_argument(
        "--trainer-dir", type=Path, default=None, metavar="DIR",
        help="measure the trainer package in DIR instead of the installed one",
    )  # fmt: skip
    measure.set_defaults(handler=_measure)
