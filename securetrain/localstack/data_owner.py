"""The local stack's data owners: the Ed25519 keys that sign their dataset manifests, contracts and export approvals.

Two owners pool data in the demo's contract: ``hospital-a`` (:data:`FIRST_OWNER`, which onboards through
Airflow's ``data_onboarding``) and ``hospital-b`` (:data:`SECOND_OWNER`, which publishes with ``securetrain
dataset publish``). Each private key is its owner's alone (``<state>/secrets/<owner dir>/signing-key.pem``, 0600):
it is given to the owner's own tools, never to the pipeline's Airflow environment or the TEE. The TEE is started
with the public halves (``<state>/policies/<owner key file>``), which are part of its measured configuration,
so the workload an owner approves is one that trusts exactly these owners.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core import signed_documents
from securetrain.core.audit.checkpoints import load_or_create_signing_key, public_key_pem
from securetrain.core.signed_documents import load_public_key
from securetrain.localstack.layout import StackLayout, write_file
from securetrain.tee.data_owners import OWNER_KEY
from securetrain.localstack.stack_gpu import gpu_configuration
from securetrain.tee.workload import host_data


@dataclass(frozen=True)
class StackDataOwner:
    """A data owner of the local stack: the party id it signs contracts as, and where its keys lie."""

    party: str
    secrets_dir: str
    public_key_file: str


FIRST_OWNER = StackDataOwner("hospital-a", "data-owner", "data-owner-key.pem")
SECOND_OWNER = StackDataOwner("hospital-b", "data-owner-b", "data-owner-b-key.pem")
DATA_OWNERS = (FIRST_OWNER, SECOND_OWNER)


def signing_key_path(layout: StackLayout, owner: StackDataOwner = FIRST_OWNER) -> Path:
    return layout.secrets_dir / owner.secrets_dir / "signing-key.pem"


def public_key_path(layout: StackLayout, owner: StackDataOwner = FIRST_OWNER) -> Path:
    return layout.policies_dir / owner.public_key_file


def signing_key(layout: StackLayout, owner: StackDataOwner = FIRST_OWNER) -> Ed25519PrivateKey:
    """``owner``'s signing key, created on first use; its public half written for the TEE."""
    key = load_or_create_signing_key(signing_key_path(layout, owner))
    path = public_key_path(layout, owner)
    if not path.exists():
        write_file(path, public_key_pem(key), mode=0o644)
    return key


def trusted_key_paths(layout: StackLayout) -> list[Path]:
    """The public keys the TEE of ``layout`` pins: the first owner's (made here on first use) and each other
    owner's that exists.

    A deployment hands only public halves to the trainer's tree (``docker/pki_init.py``), which then never
    holds a private key; the local stack makes every owner's key (:func:`stack_owner_keys`).
    """
    if not public_key_path(layout).exists():
        signing_key(layout)
    return [path for owner in DATA_OWNERS if (path := public_key_path(layout, owner)).exists()]


def key_ids(layout: StackLayout) -> list[str]:
    """The ids of the data owner keys the TEE of ``layout`` trusts."""
    return [signed_documents.key_id(load_public_key(path, OWNER_KEY)) for path in trusted_key_paths(layout)]


def stack_owner_keys(layout: StackLayout) -> list[Path]:
    """Every stack data owner's key, made on first use (``stack up`` does, first); the public halves the local
    TEE pins."""
    for owner in DATA_OWNERS:
        signing_key(layout, owner)
    return trusted_key_paths(layout)


def stack_host_data(layout: StackLayout) -> bytes:
    """HOST_DATA of the local TEE: the installed workload, trusting the data owners whose keys it pins and
    requiring the stack's GPU, if it has one (:mod:`securetrain.localstack.stack_gpu`)."""
    return host_data(key_ids(layout), gpu=gpu_configuration(layout))


def airflow_connection(layout: StackLayout, owner: StackDataOwner = FIRST_OWNER) -> dict[str, str]:
    """The Airflow connection variable that gives ``owner``'s onboarding tasks its signing key.

    Only the data owner's own runs get it (the demo's ``data_onboarding``, passed as an override), never the
    pipeline's Airflow environment (:func:`securetrain.localstack.airflow_env.airflow_environment`).
    """
    signing_key(layout, owner)
    extra = {"signing_key": str(signing_key_path(layout, owner))}
    return {"AIRFLOW_CONN_SECURETRAIN_DATA_OWNER": json.dumps({"conn_type": "generic", "extra": extra}, sort_keys=True)}
