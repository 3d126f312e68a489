"""``securetrain keys rotate | public-key``: the KEK in Key Vault, as the identity the settings name.

``rotate`` rotates the KEK as key rotation does in the ``key_rotation`` DAG: run as a key-rotator identity,
it makes a new version (that role can do nothing else), the TEE rewraps the data key of every sealed blob of the
containers to it (``POST /v1/rewraps``: no data key is unwrapped outside the TEE, and no data is
re-encrypted), and this command checks the TEE's signed statement and every header; see docs/keys.md.
``public-key`` writes the KEK's public key for sealing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from securetrain.core.cli.settings import CommandSettings
from securetrain.core.keyvault import (
    KEK_NAME,
    KEY_VAULT_ERRORS,
    check_kek,
    check_kek_version,
    kek_public_key,
    key_client_from_settings,
    versions_under_other_policies,
)
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.rotation import (
    RotationIncomplete,
    approved_tee_validator,
    require_complete,
    rewrap_in_tee,
    verify_rotation,
)
from securetrain.core.sealed import KekPublicKey
from securetrain.core.storage import BlobStore


def _new_version(settings: CommandSettings, name: str, approved: ReleasePolicy, *, resume: bool) -> KekPublicKey:
    """The version to rotate to: a new one, or (``resume``) the latest; either way checked to carry the
    approved release policy, immutably."""
    operation = "read the latest version of" if resume else "make a new version of"
    with KEY_VAULT_ERRORS.translated(operation, f"KEK {name}"), key_client_from_settings(settings) as keys:
        if resume:
            return kek_public_key(check_kek(keys, name, approved))
        return kek_public_key(check_kek_version(keys.rotate_key(name), approved))


def _rotate(args: argparse.Namespace) -> int:
    settings = CommandSettings.load(args.settings)
    approved = settings.approved_release_policy()
    new_kek = _new_version(settings, args.key, approved, resume=args.resume)
    print(f"{'resuming the rotation to' if args.resume else 'new KEK version'} {new_kek.kek_id}")
    approved_tee = approved_tee_validator(settings.url("attestation_endpoint"), settings.tls_verify, approved)
    with settings.agent() as cvm:
        statement = rewrap_in_tee(cvm, new_kek.kek_id, args.container, approved_tee)
    print(json.dumps(statement, indent=2))
    try:
        require_complete(statement)
    except RotationIncomplete as exc:
        print(f"{exc}: run `securetrain keys rotate --resume` to finish them")
        return 1
    with KEY_VAULT_ERRORS.translated("list the versions of", args.key), key_client_from_settings(settings) as keys:
        other = versions_under_other_policies(keys, args.key, approved)
    with BlobStore.from_settings(settings) as store:
        print(json.dumps(verify_rotation(store, new_kek, statement, args.container, other_policies=other), indent=2))
    return 0


def _public_key(args: argparse.Namespace) -> int:
    settings = CommandSettings.load(args.settings)
    with KEY_VAULT_ERRORS.translated("read", f"KEK {args.key}"), key_client_from_settings(settings) as keys:
        kek = kek_public_key(keys.get_key(args.key, args.version))
    args.output.write_bytes(
        kek.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    print(kek.kek_id)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "keys", help="the KEK in Key Vault: rotate it, export its public key",
        description="Key Vault operations on the KEK ($SECURETRAIN_KEYVAULT_URL), as the identity the settings name.",
    )  # fmt: skip
    commands = group.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    rotate = commands.add_parser(
        "rotate", help="new KEK version; the TEE rewraps every sealed blob's data key in the containers",
        description="Create a new version of the KEK (as a key-rotator identity) and have the TEE rewrap the "
        "data key in the header of every sealed blob of each CONTAINER to it: the TEE has the versions released "
        "to it, unwraps, checks and rewraps each data key in its memory, and replaces each header atomically, "
        "only if the blob is unchanged since read. Bulk data is not re-encrypted. Old versions stay usable. The "
        "TEE's signed statement and then every header are checked. Exits 1 if a blob changed meanwhile (rerun "
        "with --resume).",
    )  # fmt: skip
    rotate.add_argument("--container", required=True, action="append",
                        help="a blob container holding sealed files (repeat for several)")  # fmt: skip
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
