"""``securetrain cvm measure``: the HOST_DATA digest of the installed workload, for release policies.

HOST_DATA is SHA-256 of the workload manifest (``trainer.workload``): every file of the trainer and the
core library with its SHA-256, every installed distribution's RECORD digest, the Python version, and the
TEE's fixed configuration with the data owner keys it trusts. A policy that pins it refuses the key to a
TEE in which one byte of any of them changed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from securetrain import signed_documents
from securetrain.errors import ConfigurationError
from trainer.data_owners import load_owner_key
from trainer.workload import host_data, manifest


def _measure(args: argparse.Namespace) -> int:
    roots: dict[str, Path] = {}
    if args.trainer_dir is not None:
        if not (args.trainer_dir / "__init__.py").is_file():
            raise ConfigurationError(f"{args.trainer_dir} is not a trainer package directory (it has no __init__.py)")
        roots["trainer"] = args.trainer_dir
    owners = [signed_documents.key_id(load_owner_key(path)) for path in args.data_owner_key]
    if args.manifest:
        print(json.dumps(manifest(owners, roots), indent=2, sort_keys=True))
    else:
        print(host_data(owners, roots).hex())
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser("cvm", help="the confidential VM's workload: measure it")
    commands = group.add_subparsers(dest="cvm_command", metavar="COMMAND", required=True)
    measure = commands.add_parser(
        "measure",
        help="print the workload's HOST_DATA digest (hex)",
        description="Print HOST_DATA: SHA-256 of the workload manifest (trainer and core code, installed "
        "distributions, Python version, the data owner keys the TEE trusts). Pin it in the appraisal and "
        "release policies; a workload that differs in one byte reports another value and gets no key.",
        epilog="exit codes: 0 printed, 2 bad argument",
    )
    measure.add_argument("--manifest", action="store_true", help="print the manifest JSON instead of its digest")
    measure.add_argument(
        "--data-owner-key", type=Path, action="append", default=[], metavar="PEM",
        help="a data owner's Ed25519 public key the TEE is started with (repeatable; the local stack's is "
        "<state>/policies/data-owner-key.pem)",
    )  # fmt: skip
    measure.add_argument(
        "--trainer-dir", type=Path, default=None, metavar="DIR",
        help="measure the trainer package in DIR instead of the installed one",
    )  # fmt: skip
    measure.set_defaults(handler=_measure)
