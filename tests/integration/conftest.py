"""Fixtures of the integration tests that run jobs: storage of the session's stack, a sealed dataset in it."""

from __future__ import annotations

import uuid

import pytest

from securetrain.datasets import bundled_table, to_parquet
from securetrain.keyvault import fetch_kek_public_key
from securetrain.onboarding import SealedShard, seal_and_upload
from securetrain.storage import BlobStore


@pytest.fixture(scope="module")
def store(local_stack):
    """The stack's Azurite, with the containers the pipeline's environment preparation makes before a job."""
    with BlobStore.from_stack_env(local_stack.env) as blob_store:
        for container in ("checkpoints", "models"):
            blob_store.ensure_container(container)
        yield blob_store


@pytest.fixture(scope="module")
def shard(local_stack, store) -> SealedShard:
    """Breast-cancer sealed by the data owner for the stack's KEK and uploaded to Azurite."""
    kek = fetch_kek_public_key(local_stack.env["SECURETRAIN_KEK_ID"], local_stack.env)
    return seal_and_upload(
        to_parquet(bundled_table("breast-cancer")), kek=kek, store=store, container="datasets",
        blob=f"job-{uuid.uuid4().hex[:8]}/shard-0.parquet.sealed", file_format="parquet",
        context={"dataset_id": "breast-cancer"},
    )  # fmt: skip
