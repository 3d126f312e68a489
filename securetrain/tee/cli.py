"""``securetrain cvm measure``: the HOST_DATA digest of the installed workload (:mod:`securetrain.tee.workload`),
for release policies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from securetrain.core import signed_documents
from securetrain.core.signed_documents import load_public_key
from securetrain.core.errors import ConfigurationError
from securetrain.tee.data_owners import OWNER_KEY
from securetrain.tee.settings import GpuSettings
from securetrain.tee.workload import MEASURED_ZONES, host_data, manifest


def _measure(args: argparse.Namespace) -> int:
    source = args.source_dir
    if source is not None and not all((source / zone / "__init__.py").is_file() for zone in ("", *MEASURED_ZONES)):
        raise ConfigurationError(f"{source} is not a securetrain package directory (it needs __init__.py, core/ and tee/)")
    owners = [signed_documents.key_id(load_public_key(path, OWNER_KEY)) for path in args.data_owner_key]
    gpu = GpuSettings.load().gpu_configuration()
    if args.manifest:
        print(json.dumps(manifest(owners, source, gpu), indent=2, sort_keys=True))
    else:
        print(host_data(owners, source, gpu).hex())
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser("cvm", help="the confidential VM's workload: measure it")
    commands = group.add_subparsers(dest="cvm_command", metavar="COMMAND", required=True)
    measure = commands.add_parser(
        "measure",
        help="print the workload's HOST_DATA digest (hex)",
        description="Print HOST_DATA: SHA-256 of the workload manifest (TEE and core code, installed "
        "distributions, Python version, the data owner keys the TEE trusts, the GPU it requires as "
        "$SECURETRAIN_GPU and $SECURETRAIN_GPU_* in this environment say). Pin it in the attestation and "
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
        "--source-dir", type=Path, default=None, metavar="DIR",
        help="measure the securetrain package in DIR (a copy of the source) instead of the installed one",
    )  # fmt: skip
    measure.set_defaults(handler=_measure)
