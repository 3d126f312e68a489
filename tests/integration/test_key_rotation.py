"""``securetrain keys rotate``: the rotator makes a new KEK version, the TEE rewraps every sealed blob's data
key to it (no data re-encrypted, no data key outside the TEE), the CLI checks the TEE's statement and the
headers; an interrupted rotation leaves every blob readable and ``--resume`` finishes it."""

from __future__ import annotations

import io
import json
import time
import uuid

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.keyvault.keys import KeyReleasePolicy
from azure.storage.blob import ContainerClient

from securetrain.core.cli import main
from securetrain.core.keyvault import kek_public_key, key_client_from_settings, rewrap_blob
from securetrain.core.rotation import RotationNotVerified, verify_rotated_headers
from securetrain.core.sealed import SealedReader, inspect, seal
from securetrain.core.storage import BlobStore
from tests.jobs import released_kek

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(local_stack):
    env = local_stack.env
    name = f"kek-{uuid.uuid4().hex[:8]}"
    with key_client_from_settings(local_stack.settings("data-owner")) as keys:
        policy = open(env["SECURETRAIN_RELEASE_POLICY"], "rb").read()
        first = keys.create_rsa_key(name, size=2048, exportable=True, release_policy=KeyReleasePolicy(policy, immutable=True))
    container = ContainerClient(
        env["SECURETRAIN_BLOB_ENDPOINT"], f"rot-{uuid.uuid4().hex[:8]}",
        credential=AzureNamedKeyCredential(env["SECURETRAIN_BLOB_ACCOUNT_NAME"], env["SECURETRAIN_BLOB_ACCOUNT_KEY"]),
        connection_verify=env["SECURETRAIN_CA_BUNDLE"],
    )  # fmt: skip
    container.create_container()
    kek = kek_public_key(first)
    plaintexts = {}
    for i in range(3):
        sealed = io.BytesIO()
        plaintexts[f"data/part-{i}.sealed"] = data = bytes([i]) * (300_000 + i)
        seal(io.BytesIO(data), sealed, kek, {"part": str(i)}, segment_size=65536)
        container.upload_blob(f"data/part-{i}.sealed", sealed.getvalue(), metadata={"part": str(i)})
    time.sleep(1.1)  # Key Vault's creation times are whole seconds: the rotated version must be the newer one
    yield env, name, container, kek, plaintexts
    container.delete_container()
    container.close()


def rotate(local_stack, container: ContainerClient, name: str, *options: str) -> int:
    """``securetrain keys rotate`` as the key-rotator, with the settings the stack wrote for it."""
    settings = str(local_stack.settings_file("key-rotator"))
    return main(["--settings", settings, "keys", "rotate", "--container", container.container_name, "--key", name, *options])


def _header(container: ContainerClient, blob: str):
    return inspect(io.BytesIO(container.download_blob(blob).readall()))


def _stream(container: ContainerClient, blob: str) -> bytes:
    data = container.download_blob(blob).readall()
    return data[inspect(io.BytesIO(data)).size :]


def _opens(container: ContainerClient, blob: str, kek) -> bytes:
    return b"".join(bytes(s) for s in SealedReader(io.BytesIO(container.download_blob(blob).readall()), kek).segments())


def _statement(output: str) -> dict:
    """The TEE's statement the command prints (the first JSON document of its output)."""
    start = output.index("{")
    return json.JSONDecoder().raw_decode(output[start:])[0]


def test_rotation_rewraps_headers_only(setup, local_stack, capsys):
    env, name, container, old_kek, plaintexts = setup
    streams = {blob: _stream(container, blob) for blob in plaintexts}
    assert rotate(local_stack, container, name) == 0
    statement = _statement(capsys.readouterr().out)
    with key_client_from_settings(local_stack.settings()) as keys:
        new_id = keys.get_key(name).id
    assert new_id != old_kek.kek_id and statement["kek_id"] == new_id
    assert sorted(statement["dek_checked"]) == sorted(f"{container.container_name}/{blob}" for blob in plaintexts)
    new_kek = released_kek(local_stack, new_id)
    for blob, stream in streams.items():
        assert _header(container, blob).key.kek_id == new_id
        assert _stream(container, blob) == stream  # bulk data untouched
        assert container.get_blob_client(blob).get_blob_properties().metadata["part"] == blob[-8]
        assert _opens(container, blob, new_kek) == plaintexts[blob]
    # Rerunning with --resume finds nothing left to do.
    assert rotate(local_stack, container, name, "--resume") == 0
    again = _statement(capsys.readouterr().out)
    assert again["rewrapped"] == [] and f"{container.container_name}/data/part-0.sealed" in again["already_current"]


def test_old_versions_still_open_and_resume_finishes(setup, local_stack):
    """An interrupted rotation leaves old blobs readable (in the TEE, with the old version); --resume finishes."""
    env, name, container, old_kek, plaintexts = setup
    with key_client_from_settings(local_stack.settings("key-rotator")) as keys:
        new_kek = kek_public_key(keys.rotate_key(name))
    old_private, new_private = released_kek(local_stack, old_kek.kek_id), released_kek(local_stack, new_kek.kek_id)
    by_id = {old_kek.kek_id: old_private, new_kek.kek_id: new_private}

    def tee_unwrap(key):  # what the TEE's rewrap does with the versions released to it
        return by_id[key.kek_id].unwrap(key.wrapped_dek, kek_id=key.kek_id, kek_thumbprint=key.kek_thumbprint)

    # "Crash" after the first blob: only part-0 is rewrapped.
    assert rewrap_blob(container.get_blob_client("data/part-0.sealed"), new_kek, tee_unwrap) == "rewrapped"
    assert _header(container, "data/part-1.sealed").key.kek_id == old_kek.kek_id
    assert _opens(container, "data/part-0.sealed", new_private) == plaintexts["data/part-0.sealed"]
    assert _opens(container, "data/part-1.sealed", old_private) == plaintexts["data/part-1.sealed"]
    with BlobStore.from_settings(local_stack.settings()) as store, pytest.raises(RotationNotVerified, match="part-1.sealed is still wrapped for"):
        verify_rotated_headers(store, new_kek, [container.container_name])
    assert rotate(local_stack, container, name, "--resume") == 0
    for blob in plaintexts:
        assert _header(container, blob).key.kek_id == new_kek.kek_id
        assert _opens(container, blob, new_private) == plaintexts[blob]
