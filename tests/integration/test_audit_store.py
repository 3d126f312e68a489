"""Audit logs in append blobs of the local stack's Azurite: recording, racing writers, tampering, the CLI."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobType, ContainerClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.audit.checkpoints import key_fingerprint, load_or_create_signing_key, public_key_pem
from securetrain.core.audit.errors import EntriesRemoved
from securetrain.core.audit.events import AuditEvent
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def log_name() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def signing_key(local_stack) -> Ed25519PrivateKey:
    return load_or_create_signing_key(local_stack.layout.audit_signing_key)


@pytest.fixture
def raw_container(local_stack):
    """The audit container through the SDK itself: what an attacker holding the account key can do."""
    env = local_stack.env
    with ContainerClient(
        env["SECURETRAIN_BLOB_ENDPOINT"], AUDIT_CONTAINER,
        credential=AzureNamedKeyCredential(env["SECURETRAIN_BLOB_ACCOUNT_NAME"], env["SECURETRAIN_BLOB_ACCOUNT_KEY"]),
        connection_verify=env["SECURETRAIN_CA_BUNDLE"],
    ) as client:  # fmt: skip
        yield client


def _event(i: int, writer: str = "pipeline") -> AuditEvent:
    return AuditEvent.now("task_state", "airflow", run_id="manual__1", details={"writer": writer, "i": i})


def _record(local_stack, log_name: str, count: int, signing_key: Ed25519PrivateKey | None, every: int = 4) -> None:
    with BlobAuditStore.from_settings(local_stack.settings(), log_name) as store, AuditLog(store, signing_key, every) as log:
        for i in range(count):
            log.record(_event(i))


def test_a_recorded_log_is_in_append_blobs_and_verifies(local_stack, log_name, signing_key, raw_container) -> None:
    _record(local_stack, log_name, 10, signing_key)

    for blob in (f"audit/{log_name}.jsonl", f"audit/{log_name}.checkpoints.jsonl"):
        assert raw_container.get_blob_client(blob).get_blob_properties().blob_type == BlobType.APPENDBLOB
    assert raw_container.get_container_properties().public_access is None

    with BlobAuditStore.from_settings(local_stack.settings(), log_name) as store:
        log = AuditLog(store)
        verdict = log.verify(signing_key.public_key())
        assert (verdict.entries, verdict.signed_through, verdict.unsigned_entries) == (10, 9, 0)
        assert len(store.read_checkpoints()) == 3  # after entries 3 and 7, and at close
        assert [entry.event.details["i"] for entry in log.entries()] == list(range(10))


def test_a_writer_that_lost_the_race_rereads_the_head(local_stack, log_name, signing_key) -> None:
    with (
        BlobAuditStore.from_settings(local_stack.settings(), log_name) as first_store,
        BlobAuditStore.from_settings(local_stack.settings(), log_name) as second_store,
    ):
        first, second = AuditLog(first_store, signing_key), AuditLog(second_store)
        first.record(_event(0, "first"))
        second.record(_event(1, "second"))  # first's idea of the end of the blob is now stale
        entry = first.record(_event(2, "first"))
        assert entry.seq == 2
        first.close()
        verdict = first.verify(signing_key.public_key())
    assert verdict.entries == 3 and verdict.unsigned_entries == 0


def test_two_writers_racing_never_interleave_silently(local_stack, log_name, signing_key) -> None:
    errors: list[BaseException] = []

    def write(name: str, key: Ed25519PrivateKey | None) -> None:
        try:
            with BlobAuditStore.from_settings(local_stack.settings(), log_name) as store, AuditLog(store, key, 5) as log:
                for i in range(12):
                    log.record(_event(i, name))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(name, key)) for name, key in (("a", signing_key), ("b", None))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors

    with BlobAuditStore.from_settings(local_stack.settings(), log_name) as store:
        log = AuditLog(store, signing_key)
        log.checkpoint()  # writer b holds no key: sign whatever it appended after a's last checkpoint
        assert log.verify(signing_key.public_key()).entries == 24
        written = [(entry.event.details["writer"], entry.event.details["i"]) for entry in log.entries()]
    assert sorted(written) == sorted((name, i) for name in "ab" for i in range(12))
    for name in "ab":  # each writer's own events in its order
        assert [i for writer, i in written if writer == name] == list(range(12))


def test_a_tampered_log_is_not_extended(local_stack, log_name, signing_key, raw_container) -> None:
    _record(local_stack, log_name, 4, signing_key)
    blob = raw_container.get_blob_client(f"audit/{log_name}.jsonl")
    lines = blob.download_blob().readall().splitlines(keepends=True)
    blob.upload_blob(b"".join(lines[:1] + lines[2:]), blob_type=BlobType.APPENDBLOB, overwrite=True)

    with BlobAuditStore.from_settings(local_stack.settings(), log_name) as store:
        with pytest.raises(EntriesRemoved) as caught:
            AuditLog(store, signing_key).record(_event(9))
    assert caught.value.seq == 1


def test_cli_verify_and_show(
    local_stack, log_name, signing_key, raw_container, tmp_path: Path, capsys, monkeypatch
) -> None:
    _record(local_stack, log_name, 6, signing_key)
    state = ["--settings", str(local_stack.settings_file()), "audit"]
    pin = ["--audit-key-fingerprint", key_fingerprint(signing_key.public_key())]
    public = tmp_path / "audit.pub.pem"
    public.write_bytes(public_key_pem(signing_key))
    verify = [*state, "verify", "--log", log_name, "--public-key", str(public)]

    # No pinned key: the check cannot complete, so it denies (a key file beside the log proves nothing).
    monkeypatch.delenv("SECURETRAIN_AUDIT_KEY_FINGERPRINT", raising=False)
    assert main(verify) == 2
    assert "no audit key is pinned" in capsys.readouterr().err
    assert main([*verify, *pin]) == 0
    assert "6 entries, chain intact" in capsys.readouterr().out
    monkeypatch.setenv("SECURETRAIN_AUDIT_KEY_FINGERPRINT", pin[1])
    assert main(verify) == 0
    capsys.readouterr()

    assert main([*state, "show", "--log", log_name]) == 0
    shown = capsys.readouterr().out
    assert "task_state" in shown and "6 entries" in shown

    other_key = Ed25519PrivateKey.generate()
    other = tmp_path / "other.pub.pem"
    other.write_bytes(public_key_pem(other_key))
    assert main([*state, "verify", "--log", log_name, "--public-key", str(other), *pin]) == 3
    assert "not the pinned" in capsys.readouterr().err
    other_pin = ["--audit-key-fingerprint", key_fingerprint(other_key.public_key())]
    assert main([*state, "verify", "--log", log_name, "--public-key", str(other), *other_pin]) == 3
    assert "does not verify with the audit public key" in capsys.readouterr().err

    # One byte of entry 2 edited by someone holding the storage account key.
    blob = raw_container.get_blob_client(f"audit/{log_name}.jsonl")
    data = blob.download_blob().readall()
    lines = data.splitlines(keepends=True)
    offset = sum(map(len, lines[:2])) + lines[2].index(b'"i":2') + 4
    tampered = data[:offset] + b"7" + data[offset + 1 :]
    blob.upload_blob(tampered, blob_type=BlobType.APPENDBLOB, overwrite=True)
    assert main([*verify, *pin]) == 3
    error = capsys.readouterr().err
    assert "audit entry 2 was changed" in error


def test_cli_verify_refuses_a_bad_log_name_or_key_file(local_stack, tmp_path: Path, capsys) -> None:
    state = ["--settings", str(local_stack.settings_file()), "audit"]
    key = Ed25519PrivateKey.generate()
    pin = ["--audit-key-fingerprint", key_fingerprint(key.public_key())]
    assert main([*state, "verify", "--log", "bad/name", "--public-key", str(tmp_path / "none.pem"), *pin]) == 2
    assert "cannot read the audit public key" in capsys.readouterr().err
    public = tmp_path / "audit.pub.pem"
    public.write_bytes(public_key_pem(key))
    assert main([*state, "verify", "--log", "bad/name", "--public-key", str(public), *pin]) == 2
    assert "audit log name 'bad/name' is invalid" in capsys.readouterr().err
