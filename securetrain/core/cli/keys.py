"""``securetrain keys rotate | public-key``: the KEK in Key Vault, against the local stack's settings.

``rotate`` rotates the KEK as key rotation does in the ``key_rotation`` DAG: the ``key-rotator`` identity
makes a new version (it can do nothing else), the TEE rewraps the data key of every sealed blob of the
containers to it (``POST /v1/rewraps``: no data key is unwrapped outside the TEE, and no data is
re-encrypted), and this command checks the TEE's signed statement and every header; see docs/keys.md.
``public-key`` writes the KEK's public key for sealing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from azure.core.exceptions import AzureError
from cryptography.hazmat.primitives import serialization

from securetrain.core.cvm_client import CvmClient
from securetrain.core.errors import ConfigurationError, SecuretrainError
from securetrain.core.identity import PIPELINE_IDENTITY, ROTATOR_IDENTITY
from securetrain.core.keyvault import (
    KEK_NAME,
    check_kek,
    check_kek_version,
    kek_public_key,
    key_client_from_stack_env,
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
from securetrain.localstack.envfile import read_stack_env
from securetrain.localstack.layout import resolve_state_dir
from securetrain.core.storage import BlobStore


class KeyVaultRequestFailed(SecuretrainError):
    """Key Vault answered an operation with an error; the message carries its reason."""


def _stack_env(args: argparse.Namespace) -> dict[str, str]:
    path = resolve_state_dir(args.state_dir).joinpath("stack.env")
    if not path.exists():
        raise ConfigurationError(f"{path} does not exist: run `securetrain stack up` first")
    return dict(read_stack_env(path))


def _new_version(env: dict[str, str], name: str, approved: ReleasePolicy, *, resume: bool) -> KekPublicKey:
    """The version to rotate to: a new one made by the rotator, or (``resume``) the latest, read by the
    pipeline; either way checked to carry the approved release policy, immutably."""
    try:
        if resume:
            with key_client_from_stack_env(env, PIPELINE_IDENTITY) as keys:
                return kek_public_key(check_kek(keys, name, approved))
        with key_client_from_stack_env(env, ROTATOR_IDENTITY) as keys:
            return kek_public_key(check_kek_version(keys.rotate_key(name), approved))
    except AzureError as exc:
        raise KeyVaultRequestFailed(f"{'reading' if resume else 'rotating'} {name} failed: {exc.message}") from None


def _rotate(args: argparse.Namespace) -> int:
    env = _stack_env(args)
    approved = ReleasePolicy.parse(Path(env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
    new_kek = _new_version(env, args.key, approved, resume=args.resume)
    print(f"{'resuming the rotation to' if args.resume else 'new KEK version'} {new_kek.kek_id}")
    approved_tee = approved_tee_validator(env["SECURETRAIN_ATTESTATION_ENDPOINT"], env["SECURETRAIN_CA_BUNDLE"], approved)
    with CvmClient.from_stack_env(env, PIPELINE_IDENTITY) as cvm:
        statement = rewrap_in_tee(cvm, new_kek.kek_id, args.container, approved_tee)
    print(json.dumps(statement, indent=2))
    try:
        require_complete(statement)
    except RotationIncomplete as exc:
        print(f"{exc}: run `securetrain keys rotate --resume` to finish them")
        return 1
    with key_client_from_stack_env(env, PIPELINE_IDENTITY) as keys:
        other = versions_under_other_policies(keys, args.key, approved)
    with BlobStore.from_stack_env(env) as store:
        print(json.dumps(verify_rotation(store, new_kek, statement, args.container, other_policies=other), indent=2))
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
        "rotate", help="new KEK version; the TEE rewraps every sealed blob's data key in the containers",
        description="Create a new version of the KEK (as the key-rotator identity) and have the TEE rewrap the "
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
