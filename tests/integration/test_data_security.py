"""The data-security stage's check of sealed shards, without a key, against Azurite and the stack's vault."""

from __future__ import annotations

import dataclasses
import io
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.airflow.data_security import DatasetCheckFailed, check_shard
from securetrain.core.datasets import bundled_table, to_parquet
from securetrain.core.keyvault import fetch_kek_public_key
from securetrain.core.onboarding import seal_and_upload
from securetrain.core.sealed import KekPublicKey
from securetrain.core.storage import PublicContainer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kek(local_stack) -> KekPublicKey:
    return fetch_kek_public_key(local_stack.env["SECURETRAIN_KEK_ID"], local_stack.settings())


@pytest.fixture(scope="module")
def shard(store, kek):
    return seal_and_upload(to_parquet(bundled_table("breast-cancer")), kek=kek, store=store, container="datasets",
                           blob=f"check-{uuid.uuid4().hex[:8]}/shard-0.sealed", file_format="parquet",
                           context={"dataset_id": "breast-cancer", "version": "v1"})  # fmt: skip


def test_a_shard_that_matches_its_manifest_and_the_kek_passes(store, kek, shard) -> None:
    check_shard(store, shard, kek)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"plaintext_sha256": "0" * 64}, "plaintext digest differs"),
        ({"plaintext_bytes": 1}, "plaintext bytes"),
        ({"sealed_bytes": 7}, "the manifest 7"),
        ({"context": {"dataset_id": "another"}}, "seal context lacks"),
    ],
)
def test_a_manifest_that_disagrees_with_the_sealed_header_is_refused(store, kek, shard, change, named) -> None:
    with pytest.raises(DatasetCheckFailed, match=named):
        check_shard(store, dataclasses.replace(shard, **change), kek)


def test_a_shard_sealed_for_another_key_is_refused(store, shard) -> None:
    other = KekPublicKey(shard.kek_id, rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    with pytest.raises(DatasetCheckFailed, match="thumbprint"):
        check_shard(store, shard, other)


def test_a_shard_whose_header_was_tampered_with_is_refused(store, kek, shard) -> None:
    sealed = bytearray(b"".join(store.download_chunks(shard.container, shard.blob)))
    sealed[10] ^= 0x01
    blob = shard.blob + ".tampered"
    store.upload_stream(shard.container, blob, io.BytesIO(bytes(sealed)), length=len(sealed))
    with pytest.raises(DatasetCheckFailed, match="header does not parse|digest|size|context"):
        check_shard(store, dataclasses.replace(shard, blob=blob), kek)


def test_a_public_container_is_refused(store, kek, shard) -> None:
    container = f"public-{uuid.uuid4().hex[:8]}"
    store.container_client(container).create_container(public_access="blob")
    copy = dataclasses.replace(shard, container=container)
    data = b"".join(store.download_chunks(shard.container, shard.blob))
    store.upload_stream(container, shard.blob, io.BytesIO(data), length=len(data))
    with pytest.raises(PublicContainer):
        check_shard(store, copy, kek)
