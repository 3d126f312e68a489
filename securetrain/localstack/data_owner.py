"""The local stack's data owner: the Ed25519 key that signs its dataset manifests and export approvals.

The private key is the data owner's alone (``<state>/secrets/data-owner/signing-key.pem``, 0600): it is
given to the owner's own tools (the demo's onboarding, ``securetrain models approve-export``), never to
the pipeline's Airflow environment or the TEE. The TEE is started with the public half
(``<state>/policies/data-owner-key.pem``), which is part of its measured configuration, so the workload
the owner approves is one that trusts exactly this owner.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core import signed_documents
from securetrain.core.audit.checkpoints import load_or_create_signing_key, public_key_pem
from securetrain.core.signed_documents import load_public_key
from securetrain.localstack.layout import StackLayout, write_file
from securetrain.tee.data_owners import OWNER_KEY
from securetrain.tee.workload import host_data


def signing_key_path(layout: StackLayout) -> Path:
    return layout.secrets_dir / "data-owner" / "signing-key.pem"


def public_key_path(layout: StackLayout) -> Path:
    return layout.policies_dir / "data-owner-key.pem"


def signing_key(layout: StackLayout) -> Ed25519PrivateKey:
    """The data owner's signing key, created on first use; its public half written for the TEE."""
    key = load_or_create_signing_key(signing_key_path(layout))
    path = public_key_path(layout)
    if not path.exists():
        write_file(path, public_key_pem(key), mode=0o644)
    return key


def key_ids(layout: StackLayout) -> list[str]:
    """The ids of the data owner keys the TEE of ``layout`` trusts: the public key in its policies.

    In the local stack the owner's key is made here on first use; a deployment hands only the public
    half to the trainer's tree (``docker/pki_init.py``), which then never holds the private key.
    """
    if not public_key_path(layout).exists():
        signing_key(layout)
    return [signed_documents.key_id(load_public_key(public_key_path(layout), OWNER_KEY))]


def stack_host_data(layout: StackLayout) -> bytes:
    """HOST_DATA of the local TEE: the installed workload, trusting the stack's data owner."""
    return host_data(key_ids(layout))


def airflow_connection(layout: StackLayout) -> dict[str, str]:
    """The Airflow connection variable that gives the data owner's onboarding tasks the signing key.

    Only the data owner's own runs get it (the demo's ``data_onboarding``, passed as an override), never the
    pipeline's Airflow environment (:func:`securetrain.localstack.airflow_env.airflow_environment`).
    """
    signing_key(layout)
    extra = {"signing_key": str(signing_key_path(layout))}
    return {"AIRFLOW_CONN_SECURETRAIN_DATA_OWNER": json.dumps({"conn_type": "generic", "extra": extra}, sort_keys=True)}
