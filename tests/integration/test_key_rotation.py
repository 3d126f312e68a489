"""``securetrain keys rotate``: new KEK version, every sealed blob's data key rewrapped, no data re-encrypted."""

from __future__ import annotations

import io
import uuid

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.keyvault.keys import KeyReleasePolicy
from azure.storage.blob import ContainerClient

from securetrain.cli import main
from securetrain.identity import LocalIdentityCredential
from securetrain.keyvault import cryptography_client, kek_public_key, key_client_from_stack_env, rewrap_blob
from securetrain.sealed import inspect, seal

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(local_stack, monkeypatch):
    env = local_stack.env
    monkeypatch.setenv("SECURETRAIN_STATE_DIR", str(local_stack.state_dir))
    name = f"kek-{uuid.uuid4().hex[:8]}"
    with key_client_from_stack_env(env, "pipeline") as keys:
        policy = open(env["SECURETRAIN_RELEASE_POLICY"], "rb").read()
        first = keys.create_rsa_key(name, size=2048, exportable=True, release_policy=KeyReleasePolicy(policy))
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
    yield env, name, container, kek, plaintexts
    container.delete_container()
    container.close()


def _header(container: ContainerClient, blob: str):
    return inspect(io.BytesIO(container.download_blob(blob).readall()))


def _stream(container: ContainerClient, blob: str) -> bytes:
    data = container.download_blob(blob).readall()
    return data[inspect(io.BytesIO(data)).size :]


def test_rotation_rewraps_headers_only(setup, local_stack, capsys):
    env, name, container, old_kek, _ = setup
    streams = {blob: _stream(container, blob) for blob in ("data/part-0.sealed", "data/part-1.sealed", "data/part-2.sealed")}
    assert main(["keys", "rotate", "--container", container.container_name, "--key", name, "--prefix", "data/"]) == 0
    with key_client_from_stack_env(env, "pipeline") as keys:
        new_id = keys.get_key(name).id
    assert new_id != old_kek.kek_id
    for blob, stream in streams.items():
        assert _header(container, blob).key.kek_id == new_id
        assert _stream(container, blob) == stream  # bulk data untouched
        assert container.get_blob_client(blob).get_blob_properties().metadata["part"] == blob[-8]
    # Rerunning with --resume finds nothing left to do.
    assert main(["keys", "rotate", "--container", container.container_name, "--key", name, "--resume"]) == 0
    assert '"already_current": [\n    "data/part-0.sealed"' in capsys.readouterr().out


def test_old_versions_still_unwrap_and_resume_finishes(setup, local_stack):
    """An interrupted rotation leaves old blobs readable; --resume rewraps what is left."""
    env, name, container, old_kek, _ = setup
    with key_client_from_stack_env(env, "pipeline") as keys:
        new_kek = kek_public_key(keys.rotate_key(name))
    rotator = LocalIdentityCredential.from_stack_env(env, "key-rotator")
    ca = env["SECURETRAIN_CA_BUNDLE"]
    # "Crash" after the first blob: only part-0 is rewrapped.
    outcome = rewrap_blob(container.get_blob_client("data/part-0.sealed"), new_kek,
                          lambda key_id: cryptography_client(key_id, rotator, ca_bundle=ca))  # fmt: skip
    assert outcome == "rewrapped"
    left = _header(container, "data/part-1.sealed")
    assert left.key.kek_id == old_kek.kek_id
    with cryptography_client(old_kek.kek_id, rotator, ca_bundle=ca) as crypto:
        assert len(crypto.unwrap_key("RSA-OAEP-256", left.key.wrapped_dek).key) == 32
    assert main(["keys", "rotate", "--container", container.container_name, "--key", name, "--resume"]) == 0
    for i in range(3):
        assert _header(container, f"data/part-{i}.sealed").key.kek_id == new_kek.kek_id
    rotator.close()
