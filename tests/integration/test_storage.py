"""BlobStore against the real Azurite of the local stack, over HTTPS verified with the stack CA."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.settings import ServiceSettings
from securetrain.localstack.pki import LocalCA
from securetrain.core.storage import (
    DOWNLOAD_CHUNK_SIZE,
    BlobAlreadyExists,
    BlobNotFound,
    BlobStore,
    ContainerNotFound,
    MiB,
    PublicContainer,
    StorageAccessDenied,
    StorageConfigurationError,
    StorageTlsError,
    StorageUnreachable,
)
from tests.open_connections import connections_to

pytestmark = pytest.mark.integration


@pytest.fixture
def store(local_stack) -> Iterator[BlobStore]:
    with BlobStore.from_settings(local_stack.settings()) as blob_store:
        yield blob_store


@pytest.fixture
def container(store: BlobStore) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    assert store.ensure_container(name) is True
    return name


def test_round_trip_of_a_multi_block_file(store: BlobStore, container: str, tmp_path: Path) -> None:
    content = os.urandom(10 * MiB + 12345)  # more than two blocks, last one partial
    source = tmp_path / "source.bin"
    source.write_bytes(content)

    info = store.upload_file(container, "data/part-0.sealed", source, metadata={"dataset": "demo"})
    assert info.size == len(content)
    assert info.metadata == {"dataset": "demo"}
    assert info.container == container and info.name == "data/part-0.sealed"

    target = tmp_path / "target.bin"
    with open(target, "wb") as out:
        assert store.download_to(container, "data/part-0.sealed", out) == len(content)
    assert target.read_bytes() == content

    chunks = list(store.download_chunks(container, "data/part-0.sealed"))
    assert b"".join(chunks) == content
    assert max(len(chunk) for chunk in chunks) <= DOWNLOAD_CHUNK_SIZE and len(chunks) >= 3

    with store.open_read(container, "data/part-0.sealed") as stream:
        assert stream.read(5) == content[:5]
        assert stream.read() == content[5:]


def test_small_stream_upload_properties_listing_and_delete(store: BlobStore, container: str) -> None:
    store.upload_stream(container, "a/one", io.BytesIO(b"first"), length=5)
    store.upload_stream(container, "a/two", io.BytesIO(b"second"))
    store.upload_stream(container, "b/three", io.BytesIO(b"third"), metadata={"kind": "other"})

    properties = store.properties(container, "a/one")
    assert properties.size == 5
    # A single-request upload gets an MD5 from the service; it is reported when present.
    assert properties.content_md5 in (None, hashlib.md5(b"first").digest())

    assert [blob.name for blob in store.list_blobs(container, prefix="a/")] == ["a/one", "a/two"]
    assert {blob.name: blob.metadata for blob in store.list_blobs(container)}["b/three"] == {"kind": "other"}

    store.delete(container, "a/one")
    assert [blob.name for blob in store.list_blobs(container, prefix="a/")] == ["a/two"]
    with pytest.raises(BlobNotFound):
        store.delete(container, "a/one")


def test_upload_does_not_overwrite_unless_asked(store: BlobStore, container: str) -> None:
    store.upload_stream(container, "blob", io.BytesIO(b"v1"))
    with pytest.raises(BlobAlreadyExists, match=f"blob 'blob' in container '{container}'.*overwrite=True"):
        store.upload_stream(container, "blob", io.BytesIO(b"v2"))
    store.upload_stream(container, "blob", io.BytesIO(b"v2"), overwrite=True)
    assert b"".join(store.download_chunks(container, "blob")) == b"v2"


def test_ensure_container_is_idempotent(store: BlobStore, container: str) -> None:
    assert store.ensure_container(container) is False


def test_missing_blob_and_container_give_specific_errors(store: BlobStore, container: str) -> None:
    with pytest.raises(BlobNotFound, match=f"blob 'nope.sealed' in container '{container}'.*upload it first"):
        store.properties(container, "nope.sealed")
    with pytest.raises(BlobNotFound):
        store.open_read(container, "nope.sealed")
    with pytest.raises(BlobNotFound):
        list(store.download_chunks(container, "nope.sealed"))
    with pytest.raises(BlobNotFound):
        store.download_to(container, "nope.sealed", io.BytesIO())
    with pytest.raises(ContainerNotFound, match="container 'no-such-container' does not exist"):
        store.properties("no-such-container", "x")
    with pytest.raises(ContainerNotFound):
        list(store.list_blobs("no-such-container"))


def test_client_without_the_stack_ca_is_refused_by_tls(local_stack, tmp_path: Path) -> None:
    credential = AzureNamedKeyCredential(
        local_stack.env["SECURETRAIN_BLOB_ACCOUNT_NAME"], local_stack.env["SECURETRAIN_BLOB_ACCOUNT_KEY"]
    )
    other_ca = LocalCA.load_or_create(tmp_path / "other-ca")
    for ca_bundle in (None, other_ca.cert_path):  # the system's CAs, then a CA that is not the stack's
        with BlobStore(local_stack.blob_endpoint, credential, ca_bundle=ca_bundle) as untrusting:
            started = time.monotonic()
            with pytest.raises(StorageTlsError, match="TLS verification failed") as raised:
                untrusting.ensure_container("tls-check")
            assert time.monotonic() - started < 5, "a TLS failure must not be retried"
            assert isinstance(raised.value, SecurityViolation)


def test_wrong_account_key_is_access_denied(local_stack) -> None:
    wrong = AzureNamedKeyCredential(local_stack.env["SECURETRAIN_BLOB_ACCOUNT_NAME"], "A" * 86 + "==")
    with (
        BlobStore(local_stack.blob_endpoint, wrong, ca_bundle=local_stack.ca_bundle) as wrong_key,
        pytest.raises(StorageAccessDenied, match="refused to list container 'anything'") as raised,
    ):
        list(wrong_key.list_blobs("anything"))
    assert raised.value.exit_code == 3


def test_plain_http_and_missing_settings_are_refused(local_stack, tmp_path: Path) -> None:
    credential = AzureNamedKeyCredential("devstoreaccount1", "a2V5")
    with pytest.raises(StorageConfigurationError, match="not an https URL"):
        BlobStore("http://127.0.0.1:10000/devstoreaccount1", credential)
    with pytest.raises(StorageConfigurationError, match=r"CA bundle \S+ does not exist"):
        BlobStore(local_stack.blob_endpoint, credential, ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match=r"\$SECURETRAIN_STORAGE_ACCOUNT_URL is not set"):
        BlobStore.from_settings(ServiceSettings.load(ca_bundle=local_stack.ca_bundle, storage_account_url=None))
    with pytest.raises(ConfigurationError, match="SECURETRAIN_STORAGE_ACCOUNT_URL: URL scheme should be 'https'"):
        ServiceSettings.load(storage_account_url="http://127.0.0.1:10000/devstoreaccount1")


def test_the_identity_in_the_settings_file_reaches_storage_with_an_entra_token(local_stack, container: str) -> None:
    settings = local_stack.settings()
    assert settings.client_secret is not None  # a service principal, signing in at the identity stand-in
    authority = str(settings.authority_host)
    earlier = connections_to(authority)
    with BlobStore.from_settings(settings) as signed_in:
        assert signed_in.account_url == local_stack.blob_endpoint
        assert list(signed_in.list_blobs(container)) == []
        assert connections_to(authority) - earlier, "the credential kept no connection to the identity service"
    # The store closed the credential it made: a process that lives on holds no connection to Entra ID.
    assert not connections_to(authority) - earlier


@pytest.mark.slow
def test_unreachable_endpoint_fails_after_bounded_retries(local_stack) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    nowhere_url = f"https://127.0.0.1:{closed_port}/devstoreaccount1"
    with BlobStore(nowhere_url, local_stack.credential(), ca_bundle=local_stack.ca_bundle) as nowhere:
        started = time.monotonic()
        with pytest.raises(StorageUnreachable, match="no answer after 4 attempts"):
            nowhere.properties("container", "blob")
    assert time.monotonic() - started < 30


def test_airflow_wasb_connection_from_stack_env_reaches_azurite(
    local_stack, store: BlobStore, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    store.upload_stream(container, "written-by-blobstore", io.BytesIO(b"hello airflow"))
    monkeypatch.setenv("AIRFLOW_CONN_SECURETRAIN_STORAGE", local_stack.env["AIRFLOW_CONN_SECURETRAIN_STORAGE"])
    hook = WasbHook(wasb_conn_id="securetrain_storage")
    assert hook.get_blobs_list(container) == ["written-by-blobstore"]
    assert hook.read_file(container, "written-by-blobstore") == "hello airflow"


def test_storage_hook_signs_in_as_the_provider_does_under_the_stores_own_policy(
    local_stack, store: BlobStore, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.identity import ClientSecretCredential

    from securetrain.airflow.hooks.storage import SecureStorageHook

    store.upload_stream(container, "sealed", io.BytesIO(b"ciphertext"))
    settings, ca = local_stack.settings(), str(local_stack.ca_bundle)
    # A service principal as the provider reads one; the identity stand-in being no Microsoft cloud, the
    # provider passes its credential the authority and the CA in client_secret_auth_config.
    entra = {"authority": str(settings.authority_host).rstrip("/"), "disable_instance_discovery": True,
             "connection_verify": ca}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_STORAGE_AS_PRINCIPAL", json.dumps({
        "conn_type": "wasb", "host": local_stack.blob_endpoint, "login": settings.client_id,
        "password": settings.client_secret.get_secret_value(),
        "extra": {"tenant_id": settings.tenant_id, "connection_verify": ca, "client_secret_auth_config": entra}}))
    assert isinstance(SecureStorageHook("storage_as_principal").get_conn().credential, ClientSecretCredential)
    with SecureStorageHook("storage_as_principal").blob_store() as signed_in:
        assert b"".join(signed_in.download_chunks(container, "sealed")) == b"ciphertext"
    # The stack's connection (the account key) without its CA bundle: TLS fails at once, under the store's policy.
    by_key = json.loads(local_stack.env["AIRFLOW_CONN_SECURETRAIN_STORAGE"])
    del by_key["extra"]["connection_verify"]
    monkeypatch.setenv("AIRFLOW_CONN_SECURETRAIN_STORAGE", json.dumps(by_key))
    started = time.monotonic()
    with SecureStorageHook().blob_store() as untrusting, pytest.raises(StorageTlsError, match="TLS verification"):
        list(untrusting.list_blobs(container))
    assert time.monotonic() - started < 5, "a TLS failure must not be retried"


# Runs in a fresh interpreter so that its peak RSS says what one upload and one download cost.
_MEMORY_PROBE = """
import resource, sys
from pathlib import Path
from securetrain.core.settings import ServiceSettings
from securetrain.core.storage import BlobStore

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

source, target, settings_file, container = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
with BlobStore.from_settings(ServiceSettings.load(settings_file)) as store:
    list(store.list_blobs(container))  # connections and TLS set up before the baseline
    baseline = peak_mib()
    store.upload_file(container, "big.bin", source)
    after_upload = peak_mib()
    with open(target, "wb") as out:
        store.download_to(container, "big.bin", out)
    after_download = peak_mib()
print(after_upload - baseline, after_download - after_upload)
"""


def test_64_mib_transfers_stream_in_bounded_memory(local_stack, container: str, tmp_path: Path) -> None:
    size = 64 * MiB
    source, target = tmp_path / "big.bin", tmp_path / "big.out"
    digest = hashlib.sha256()
    with open(source, "wb") as out:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            digest.update(block)
            out.write(block)

    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_PROBE,
            str(source),
            str(target),
            str(local_stack.settings_file()),
            container,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    upload_growth, download_growth = map(float, probe.stdout.split())
    # Buffering the file would grow the peak by at least 64 MiB; streaming costs a few blocks.
    assert upload_growth < 32, f"upload grew peak memory by {upload_growth:.0f} MiB"
    assert download_growth < 32, f"download grew peak memory by {download_growth:.0f} MiB"
    assert target.stat().st_size == size
    with open(target, "rb") as downloaded:
        assert hashlib.file_digest(downloaded, "sha256").digest() == digest.digest()


def test_existing_public_container_is_refused(local_stack, store: BlobStore) -> None:
    from azure.storage.blob import BlobServiceClient

    name = f"public-{uuid.uuid4().hex[:12]}"
    # Made public with the SDK directly, as someone might have done by hand in the portal.
    with BlobServiceClient(
        local_stack.blob_endpoint,
        credential=AzureNamedKeyCredential(
            local_stack.env["SECURETRAIN_BLOB_ACCOUNT_NAME"], local_stack.env["SECURETRAIN_BLOB_ACCOUNT_KEY"]
        ),
        connection_verify=str(local_stack.ca_bundle),
    ) as client:
        client.create_container(name, public_access="blob")
    with pytest.raises(PublicContainer, match=f"container '{name}' .* allows anonymous public access"):
        store.ensure_container(name)
