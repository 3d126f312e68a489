"""A hostile orchestrator rewrites history; ``securetrain audit verify`` (and ``models verify``) refuse it.

Finding 4 of the security review: the audit checkpoints were signed with a key Airflow holds and verification
trusted whatever key file was in the state directory, so a log rewritten without the Key Vault and attestation
events and re-signed verified, and so did a log rolled back to an earlier checkpoint. Here one real job on the
stack's agent produces the TEE's own signed event log; its model is registered (the TEE-signed statement names
the head of that log); the run's audit log is written as the audit stage writes it. Then, with everything a
stock Airflow holds (the storage account key, the audit signing key in the state directory), the log is
rewritten, re-signed, cut back, and every version is refused by verification with the pinned audit key.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.audit.chain import AuditEntry
from securetrain.core.audit.checkpoints import (
    Checkpoint,
    key_fingerprint,
    load_or_create_signing_key,
    public_key_pem,
)
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.sources import attestation_events, keyvault_events
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.audit.tee_log import audit_events as tee_audit_events
from securetrain.core.cli import main
from securetrain.core.model_registry import ModelVersion
from securetrain.core.storage import BlobNotFound, BlobStore
from tests.jobs import job_spec, register, run_job

pytestmark = pytest.mark.integration

# What the rewrite of finding 4 leaves out: every Key Vault and attestation event, the TEE's among them.
VAULT_AND_ATTESTATION = {EventKind.EVIDENCE_APPRAISED, EventKind.KEY_RELEASED, EventKind.KEY_DENIED}


@pytest.fixture(scope="module")
def run(local_stack, store, dataset_ref, shard) -> dict[str, Any]:
    """A finished job, its model registered, and the events of its run as the audit stage records them."""
    since = datetime.datetime.now(datetime.UTC)
    spec = job_spec(local_stack, dataset_ref)
    with local_stack.settings().agent() as client:
        job = run_job(client, spec)
    assert job.state == "succeeded", job.error
    until = datetime.datetime.now(datetime.UTC)
    version = register(local_stack, store, shard, spec, job)
    name = spec["run_id"]
    events = [AuditEvent.now(EventKind.RUN_STARTED, EventSource.PIPELINE, run_id=name, details={"kek_id": spec["kek_id"]})]
    events += attestation_events(Path(local_stack.env["SECURETRAIN_ATTESTATION_LOG"]), run_id=name, since=since,
                                 until=until, nonces=[spec["nonce"]])  # fmt: skip
    events += keyvault_events(Path(local_stack.env["SECURETRAIN_KEYVAULT_ACCESS_LOG"]), run_id=name, since=since,
                              until=until, key_names=[spec["kek_id"].split("/keys/")[1].split("/")[0]])  # fmt: skip
    events += tee_audit_events(job.tee_log)
    events.append(AuditEvent.now(EventKind.MODEL_REGISTERED, EventSource.PIPELINE, run_id=name,
                                 details={"name": version.name, "version": version.version}))  # fmt: skip
    events.sort(key=lambda event: event.time)
    assert {EventSource.KEYVAULT, EventSource.ATTESTATION, EventSource.TEE} <= {event.source for event in events}
    return {"name": name, "events": events, "version": version}


@pytest.fixture(scope="module")
def airflow_key(local_stack) -> Ed25519PrivateKey:
    """The audit signing key in the state directory: the one the audit stage signs with, which Airflow holds."""
    return load_or_create_signing_key(local_stack.layout.audit_signing_key)


def write(store: BlobStore, name: str, entries: Sequence[bytes], checkpoints: Sequence[bytes]) -> None:
    """Replace the run's log with these lines, as whoever holds the storage account key can."""
    store.ensure_container(AUDIT_CONTAINER)
    for blob in (f"audit/{name}.jsonl", f"audit/{name}.checkpoints.jsonl"):
        try:
            store.delete(AUDIT_CONTAINER, blob)
        except BlobNotFound:
            pass
    audit_store = BlobAuditStore(store.container_client(AUDIT_CONTAINER), name)
    position = 0
    for line in entries:
        position = audit_store.append(line, position=position)
    for line in checkpoints:
        audit_store.append_checkpoint(line)


def record(store: BlobStore, name: str, events: Sequence[AuditEvent], key: Ed25519PrivateKey) -> list[Checkpoint]:
    """Write ``events`` as the run's log, signed by ``key`` every 4 entries and at the end; the checkpoints."""
    write(store, name, [], [])
    audit_store = BlobAuditStore(store.container_client(AUDIT_CONTAINER), name)
    with AuditLog(audit_store, key, checkpoint_every=4) as log:
        for event in events:
            log.record(event)
    return [Checkpoint.parse(line, n) for n, line in enumerate(audit_store.read_checkpoints(), start=1)]


def verify(local_stack, name: str, version: ModelVersion, key: Ed25519PrivateKey, *extra: str) -> int:
    return main(["--settings", str(local_stack.settings_file()), "audit", "verify", "--log", name, "--audit-key-fingerprint",
                 key_fingerprint(key.public_key()), "--public-key", str(local_stack.public_key_file(key)),
                 "--registry-container", version.container, *extra])  # fmt: skip


def test_the_log_the_audit_stage_writes_verifies_with_the_pinned_key(local_stack, store, run, airflow_key, capsys) -> None:
    record(store, run["name"], run["events"], airflow_key)
    assert verify(local_stack, run["name"], run["version"], airflow_key) == 0
    out = capsys.readouterr().out
    assert "signed by the attested TEE" in out and "attested" in out and "key_released" in out
    assert f"holds the TEE's events up to the head {run['version'].manifest['tee_log_head']['log_id']}" in out


@pytest.mark.parametrize("drop_tee_log", [False, True], ids=["tee-events-cut", "tee-log-dropped"])
def test_a_log_rewritten_without_vault_and_attestation_events_and_resigned_is_refused(
    local_stack, store, run, airflow_key, capsys, drop_tee_log
) -> None:
    rewritten = [e for e in run["events"] if e.kind not in VAULT_AND_ATTESTATION]
    if drop_tee_log:
        rewritten = [e for e in rewritten if e.source is not EventSource.TEE]
    # Re-signed with the very key the audit stage signs with: the chain and its checkpoints are valid...
    record(store, run["name"], rewritten, airflow_key)
    # ...but the TEE's log in it is not complete, or not there at all though the TEE signed up to its head.
    assert verify(local_stack, run["name"], run["version"], airflow_key) == 3
    error = capsys.readouterr().err
    assert ("holds none of the events of TEE log" if drop_tee_log else "entry 0 of TEE log") in error


def test_a_log_resigned_with_a_key_put_beside_it_is_refused(local_stack, store, run, airflow_key, tmp_path, capsys) -> None:
    attacker = Ed25519PrivateKey.generate()
    record(store, run["name"], [e for e in run["events"] if e.kind not in VAULT_AND_ATTESTATION], attacker)
    planted = tmp_path / "audit.pub.pem"
    planted.write_bytes(public_key_pem(attacker))
    # The deployment pins the audit key it provisioned; the planted one is not it.
    assert verify(local_stack, run["name"], run["version"], airflow_key, "--public-key", str(planted)) == 3
    assert "not the pinned" in capsys.readouterr().err


def test_a_log_rolled_back_to_an_earlier_checkpoint_is_refused(local_stack, store, run, airflow_key, capsys) -> None:
    checkpoints = record(store, run["name"], run["events"], airflow_key)
    audit_store = BlobAuditStore(store.container_client(AUDIT_CONTAINER), run["name"])
    lines, signed = audit_store.read_all().lines, audit_store.read_checkpoints()
    last_tee = max(i for i, line in enumerate(lines) if AuditEntry.parse(line, i).event.source is EventSource.TEE)
    earlier = max(n for n, checkpoint in enumerate(checkpoints) if checkpoint.seq < last_tee)
    # No key needed: later entries and checkpoints deleted, what is left is a valid, signed chain.
    write(store, run["name"], lines[: checkpoints[earlier].seq + 1], signed[: earlier + 1])
    assert verify(local_stack, run["name"], run["version"], airflow_key) == 3
    assert "TEE log" in capsys.readouterr().err
    version = run["version"]
    models = ["--settings", str(local_stack.settings_file()), "models", "--container", version.container]
    model_key = str(local_stack.public_key_file(local_stack.layout.model_signing_key))
    assert main([*models, "verify", version.name, str(version.version), "--public-key", model_key]) == 3
    assert "TEE log" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["altered", "removed"])
def test_a_tee_event_altered_or_removed_is_refused(local_stack, store, run, airflow_key, capsys, change) -> None:
    events = list(run["events"])
    position = next(i for i, e in enumerate(events) if e.kind is EventKind.CHECKPOINT_WRITTEN and e.source is EventSource.TEE)
    if change == "removed":
        del events[position]
    else:
        details = copy.deepcopy(events[position].details)
        details["entry"]["details"]["sealed_sha256"] = "0" * 64  # another checkpoint than the TEE sealed
        events[position] = AuditEvent(events[position].kind, events[position].run_id, EventSource.TEE,
                                      events[position].time, details)  # fmt: skip
    record(store, run["name"], events, airflow_key)
    assert verify(local_stack, run["name"], run["version"], airflow_key) == 3
    error = capsys.readouterr().err
    assert ("is missing" if change == "removed" else "does not link") in error
