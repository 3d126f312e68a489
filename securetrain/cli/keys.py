"""``securetrain keys rotate | public-key``: the KEK in Key Vault, against the local stack's settings.

``rotate`` makes a new KEK version (as the ``pipeline`` identity, Crypto Officer) and rewraps the data
key in every sealed blob of a container (unwrapping with the vault as ``key-rotator``, Crypto User),
without re-encrypting any data; see docs/keys.md. ``public-key`` writes the KEK's public key for sealing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import AzureError
from azure.storage.blob import ContainerClient
from cryptography.hazmat.primitives import serialization

from securetrain.errors import ConfigurationError, SecuretrainError
from securetrain.identity import PIPELINE_IDENTITY, ROTATOR_IDENTITY, LocalIdentityCredential
from securetrain.keyvault import (
    KEK_NAME,
    cryptography_client,
    kek_public_key,
    key_client_from_stack_env,
    rotate_container,
)
from securetrain.stack.envfile import read_stack_env
from securetrain.stack.layout import resolve_state_dir


class KeyVaultRequestFailed(SecuretrainError):
    """Key Vault answered an operation with an error; the message carries its reason."""


def _stack_env(args: argparse.Namespace) -> dict[str, str]:
    path = resolve_state_dir(args.state_dir).joinpath("stack.env")
    if not path.exists():
        raise ConfigurationError(f"{path} does not exist: run `securetrain stack up` first")
    return dict(read_stack_env(path))


def _container(env: dict[str, str], name: str) -> ContainerClient:
    return ContainerClient(
        env["SECURETRAIN_BLOB_ENDPOINT"], name,
        credential=AzureNamedKeyCredential(env["SECURETRAIN_BLOB_ACCOUNT_NAME"], env["SECURETRAIN_BLOB_ACCOUNT_KEY"]),
        connection_verify=env["SECURETRAIN_CA_BUNDLE"],
    )  # fmt: skip


def _rotate(args: argparse.Namespace) -> int:
    env = _stack_env(args)
    rotator = LocalIdentityCredential.from_stack_env(env, ROTATOR_IDENTITY)
    try:
        with key_client_from_stack_env(env, PIPELINE_IDENTITY) as keys, _container(env, args.container) as container:
            kek = keys.get_key(args.key) if args.resume else keys.rotate_key(args.key)
            new_kek = kek_public_key(kek)
            print(f"{'resuming the rotation to' if args.resume else 'new KEK version'} {new_kek.kek_id}")
            report = rotate_container(
                container,
                new_kek,
                lambda key_id: cryptography_client(key_id, rotator, ca_bundle=env["SECURETRAIN_CA_BUNDLE"]),
                prefix=args.prefix,
            )
    except AzureError as exc:
        raise KeyVaultRequestFailed(f"rotation of {args.key} failed: {exc.message}") from None
    finally:
        rotator.close()
    print(json.dumps(vars(report), indent=2))
    if report.changed_meanwhile:
        print("some blobs changed during the rotation: run `securetrain keys rotate --resume` to finish them")
        return 1
    return 0


def _public_key(args: argparse.Namespace) -> int:
    env = _stack_env(args)
    try:
        with key_client_from_stack_env(env, PIPELINE_IDENTITY) as keys:
            kek = kek_public_key(keys.get_key(args.key, args.version))
    except AzureError as exc:
        raise KeyVaultRequestFailed(f"cannot read {args.key}: {exc.message}") from None
    args.output.write_bytes(
        kek.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    print(kek.kek_id)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "keys", help="the KEK in Key Vault: rotate it, export its public key",
        description="Key Vault operations on the KEK, with the local stack's identities (stack.env).",
    )  # fmt: skip
    group.add_argument(
        "--state-dir", type=Path, default=None,
        help="the local stack's state directory (default: $SECURETRAIN_STATE_DIR or <repo>/.securetrain)",
    )  # fmt: skip
    commands = group.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    rotate = commands.add_parser(
        "rotate", help="new KEK version; rewrap every sealed blob's data key in a container",
        description="Create a new version of the KEK and rewrap the data key in the header of every sealed "
        "blob in CONTAINER (under PREFIX) to it, one blob at a time, each replaced atomically and only if "
        "unchanged since read. Bulk data is not re-encrypted. Old versions stay usable for unwrap. Exits 1 "
        "if a blob changed meanwhile (rerun with --resume).",
    )  # fmt: skip
    rotate.add_argument("--container", required=True, help="the blob container holding sealed files")
    rotate.add_argument("--prefix", default="", help="only blobs whose names start with this")
    rotate.add_argument("--key", default=KEK_NAME, help=f"the KEK's name in the vault (default {KEK_NAME})")
    rotate.add_argument(
        "--resume", action="store_true",
        help="make no new version: rewrap what is left to the latest version (after an interrupted rotation)",
    )  # fmt: skip
    rotate.set_defaults(handler=_rotate)

    public = commands.add_parser(
        "public-key", help="write the KEK's public key (PEM) for sealing; print its versioned id",
        description="Write the public half of the KEK to OUTPUT as PEM and print its versioned key id: what "
        "`securetrain seal --kek-public-key OUTPUT --kek-id ID` needs.",
    )  # fmt: skip
    public.add_argument("output", type=Path, metavar="OUTPUT")
    public.add_argument("--key", default=KEK_NAME, help=f"the KEK's name in the vault (default {KEK_NAME})")
    public.add_argument("--version", default=None, help="a key version (default: the latest)")
    public.set_defaults(handler=_public_key)
