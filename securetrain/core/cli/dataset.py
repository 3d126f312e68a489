"""``securetrain dataset publish``: a data owner publishes a sealed dataset version without Airflow.

What the ``data_onboarding`` DAG does, from the owner's own machine: keep the label and feature columns, run the
owner's Great Expectations suite, seal for the KEK's public key, upload and sign the manifest
(:func:`securetrain.core.dataset_publishing.publish_dataset`). Storage and Key Vault are reached as the identity
the settings name (``--settings``: endpoints, identity, CA bundle).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from securetrain.core.audit.checkpoints import load_signing_key
from securetrain.core.cli.settings import CommandSettings
from securetrain.core.contracts.job_spec import KEK_ID
from securetrain.core.dataset_publishing import SOURCE_FORMATS, publish_dataset
from securetrain.core.datasets import BUNDLED
from securetrain.core.errors import ConfigurationError
from securetrain.core.json_input import read_json_object
from securetrain.core.keyvault import KEY_VAULT_ERRORS, fetch_kek_public_key
from securetrain.core.sealed import KekPublicKey
from securetrain.core.storage import BlobStore

#: An expectation suite is a small JSON document; a larger file is refused before it is parsed.
MAX_SUITE_BYTES = 1 << 20

_PUBLISH = """Read the source, keep the label and feature columns, run the expectation suite on them (the TEE's
allow-list and rules), seal them for the KEK's public key in Parquet shards, upload the shards to
CONTAINER/DATASET_ID/VERSION/ and write the manifest there, signed with the owner's key. The plaintext never
leaves this machine, and nothing is uploaded unless the data passes its suite and the version is not published yet.

Prints a summary as JSON; its manifest_sha256 is the SHA-256 of the manifest's signed bytes, which a contract
pins for this version. The TEE trusts the manifest only if it was started with the public half of --owner-key."""

_EXIT_CODES = """exit codes: 0 published, 1 the data failed its expectation suite (nothing was uploaded) or a service
failed, 2 a bad argument, file, setting, column or suite, or the version is published, 3 refused (access denied, TLS,
a public container)"""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror}") from None


def _suite(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    return read_json_object(_read(path, "the expectation suite"), max_bytes=MAX_SUITE_BYTES, what=f"the suite {path}")


def _kek(args: argparse.Namespace, settings: CommandSettings) -> KekPublicKey:
    """The KEK's public key: from ``--kek-public-key`` for a versioned ``--kek-id``, else from Key Vault."""
    if args.kek_public_key is not None:
        if not re.fullmatch(KEK_ID, args.kek_id):
            raise ConfigurationError(f"--kek-public-key needs a versioned --kek-id (https://VAULT/keys/NAME/VERSION), "
                                     f"not {args.kek_id}")  # fmt: skip
        return KekPublicKey.from_pem(_read(args.kek_public_key, "the KEK public key"), args.kek_id)
    with KEY_VAULT_ERRORS.translated("read", args.kek_id):
        return fetch_kek_public_key(args.kek_id, settings)


def _publish(args: argparse.Namespace) -> int:
    settings = CommandSettings.load(args.settings)
    owner_key = load_signing_key(args.owner_key)
    suite = _suite(args.suite)
    kek = _kek(args, settings)
    with BlobStore.from_settings(settings) as store:
        published = publish_dataset(
            args.source if args.source is not None else args.bundled, dataset_id=args.dataset_id, version=args.version,
            label=args.label, features=args.features, suite=suite, kek=kek, owner_key=owner_key, store=store,
            container=args.container, shard_rows=args.shard_rows,
        )  # fmt: skip
    print(json.dumps(published.to_json(), indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "dataset", help="a data owner's datasets: publish a sealed version",
        description="A data owner's datasets in storage ($SECURETRAIN_BLOB_ENDPOINT), as the identity the settings name.",
    )  # fmt: skip
    commands = group.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)

    publish = commands.add_parser(
        "publish", help="validate, seal for the KEK, upload and sign a new dataset version",
        description=_PUBLISH,
        epilog=_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    publish.add_argument("--dataset-id", required=True, metavar="ID", help="the dataset's id, e.g. breast-cancer")
    publish.add_argument("--version", required=True, metavar="V", help="the new version, e.g. v3 (never overwritten)")
    source = publish.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", type=Path, metavar="FILE",
                        help=f"the plaintext table: a file ending in {', '.join(SOURCE_FORMATS)}")  # fmt: skip
    source.add_argument("--bundled", choices=BUNDLED, metavar="NAME",
                        help=f"a demo dataset bundled with scikit-learn: {', '.join(BUNDLED)}")  # fmt: skip
    publish.add_argument("--label", required=True, metavar="COL", help="the label column")
    publish.add_argument("--features", nargs="+", metavar="COL", default=None,
                         help="the feature columns, in this order (default: every column but the label)")  # fmt: skip
    publish.add_argument(
        "--suite", type=Path, metavar="FILE.json",
        help="a Great Expectations suite (JSON) the data must pass (default: the label is never null)",
    )  # fmt: skip
    publish.add_argument(
        "--kek-id", required=True, metavar="URL",
        help="the KEK's Key Vault key id, https://VAULT/keys/NAME[/VERSION]; its public key is read from the vault "
        "(the latest version without one) unless --kek-public-key is given",
    )  # fmt: skip
    publish.add_argument("--kek-public-key", type=Path, metavar="PEM",
                         help="the KEK's RSA public key (`securetrain keys public-key`), for a versioned --kek-id")  # fmt: skip
    publish.add_argument("--owner-key", type=Path, required=True, metavar="PEM",
                         help="the data owner's Ed25519 signing key (PEM, readable by its owner only)")  # fmt: skip
    publish.add_argument("--container", required=True, metavar="NAME", help="the blob container of sealed datasets")
    publish.add_argument("--shard-rows", type=int, metavar="N", default=None,
                         help="at most N rows per sealed shard (default: one shard)")  # fmt: skip
    publish.set_defaults(handler=_publish)
