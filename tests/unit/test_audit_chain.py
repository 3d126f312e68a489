"""The audit hash chain and its signed checkpoints: every kind of tampering is caught and named."""

from __future__ import annotations

import datetime
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from securetrain.localstack.standins.decision_log import DecisionLog
from securetrain.core.audit.chain import AuditChain, AuditEntry, entry_hash, verify
from securetrain.core.audit.checkpoints import Checkpoint, load_or_create_signing_key, public_key_pem
from securetrain.core.audit.errors import (
    AuditChainBroken,
    AuditEventInvalid,
    AuditKeyError,
    CheckpointInvalid,
    CheckpointMismatch,
    EntriesRemoved,
    EntriesReordered,
    EntryChanged,
    EntryInserted,
    UnsignedEntries,
)
from securetrain.core.audit.events import AuditEvent
from securetrain.core.signed_documents import PublicKeyInvalid, load_public_key
from securetrain.core.audit.sources import attestation_events, keyvault_events

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
KINDS = ["run_started", "evidence_appraised", "key_released", "data_validated", "checkpoint_written", "task_state"]


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        kind=KINDS[i % len(KINDS)],
        run_id="manual__2026-05-01",
        source="pipeline",
        time=f"2026-05-01T12:00:{i % 60:02d}.{i:06d}Z",
        details={"step": i, "note": "ünïcode ✓", "nested": {"ok": i % 2 == 0, "values": [1.5, None, "x"]}},
    )


def build_log(count: int, checkpoint_every: int) -> tuple[list[bytes], list[bytes]]:
    """A closed log of ``count`` entries as stored: entry lines and checkpoint lines (without newlines),
    with a checkpoint every ``checkpoint_every`` entries and one of the last entry, as AuditLog writes."""
    chain = AuditChain()
    lines, checkpoints = [], []
    for i in range(count):
        entry = chain.append(_event(i))
        lines.append(entry.line)
        if (entry.seq + 1) % checkpoint_every == 0 or i == count - 1:
            checkpoints.append(Checkpoint.sign(KEY, entry.seq, entry.hash).to_line())
    return lines, checkpoints


def split(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def broken(lines: list[bytes], checkpoints: list[bytes]) -> AuditChainBroken:
    with pytest.raises(AuditChainBroken) as caught:
        verify(lines, checkpoints, PUBLIC)
    return caught.value


logs = st.tuples(st.integers(1, 12), st.integers(1, 5)).map(lambda args: build_log(*args))


def test_an_intact_log_verifies() -> None:
    lines, checkpoints = build_log(7, 3)
    verdict = verify(lines, checkpoints, PUBLIC)
    assert (verdict.entries, verdict.checkpoints, verdict.signed_through, verdict.unsigned_entries) == (7, 3, 6, 0)
    assert verdict.head_hash == entry_hash(lines[-1])
    assert "7 entries" in verdict.summary()
    first = json.loads(lines[0])
    assert first["prev"] == "0" * 64 and first["seq"] == 0
    assert json.loads(lines[1])["prev"] == entry_hash(lines[0])


def test_an_empty_log_verifies() -> None:
    assert verify([], [], PUBLIC).entries == 0


@settings(max_examples=300, deadline=None)
@given(log=logs, data=st.data())
def test_editing_any_byte_of_any_entry_is_caught_and_names_that_entry(log, data) -> None:
    lines, checkpoints = log
    blob = bytearray(b"".join(line + b"\n" for line in lines))
    offset = data.draw(st.integers(0, len(blob) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != blob[offset]))
    edited_entry = blob[: offset].count(b"\n")  # the newline after an entry belongs to it
    blob[offset] = value

    error = broken(split(bytes(blob)), checkpoints)
    assert isinstance(error, (EntryChanged, CheckpointMismatch)), error
    assert error.seq == edited_entry, error


@settings(max_examples=150, deadline=None)
@given(log=logs, data=st.data())
def test_removing_entries_is_caught_at_the_first_removed(log, data) -> None:
    lines, checkpoints = log
    start = data.draw(st.integers(0, len(lines) - 1))
    count = data.draw(st.integers(1, len(lines) - start))
    error = broken(lines[:start] + lines[start + count :], checkpoints)
    assert isinstance(error, EntriesRemoved), error
    assert error.seq == start


@settings(max_examples=150, deadline=None)
@given(log=logs, data=st.data())
def test_reordering_entries_is_caught_at_the_first_misplaced(log, data) -> None:
    lines, checkpoints = log
    assume(len(lines) >= 2)
    order = data.draw(st.permutations(range(len(lines))))
    assume(order != list(range(len(lines))))
    error = broken([lines[i] for i in order], checkpoints)
    assert isinstance(error, EntriesReordered), error
    assert error.seq == next(i for i, j in enumerate(order) if i != j)


@settings(max_examples=150, deadline=None)
@given(log=logs, data=st.data())
def test_inserting_a_replayed_copy_is_caught_where_it_sits(log, data) -> None:
    lines, checkpoints = log
    position = data.draw(st.integers(0, len(lines)))
    copied = data.draw(st.integers(0, len(lines) - 1))
    error = broken(lines[:position] + [lines[copied]] + lines[position:], checkpoints)
    assert isinstance(error, EntryInserted), error
    # Two identical adjacent entries: the later one is the copy.
    assert error.seq == (position + 1 if copied == position else position)


@settings(max_examples=150, deadline=None)
@given(log=logs, data=st.data())
def test_inserting_a_forged_entry_that_links_correctly_is_caught_where_it_sits(log, data) -> None:
    lines, checkpoints = log
    position = data.draw(st.integers(0, len(lines)))
    prev = entry_hash(lines[position - 1]) if position else "0" * 64
    forged = AuditEntry.build(position, prev, AuditEvent.now("key_released", "keyvault", run_id="forged")).line
    error = broken(lines[:position] + [forged] + lines[position:], checkpoints)
    if position == len(lines):  # appended after the last signed head: nothing vouches for it
        assert isinstance(error, UnsignedEntries), error
    else:
        assert isinstance(error, EntryInserted), error
    assert error.seq == position


@settings(max_examples=150, deadline=None)
@given(log=logs, data=st.data())
def test_editing_any_byte_of_a_checkpoint_is_caught(log, data) -> None:
    lines, checkpoints = log
    which = data.draw(st.integers(0, len(checkpoints) - 1))
    line = bytearray(checkpoints[which])
    offset = data.draw(st.integers(0, len(line) - 1))
    line[offset] = data.draw(st.integers(0, 255).filter(lambda b: b != line[offset]))
    tampered = checkpoints[:which] + split(bytes(line)) + checkpoints[which + 1 :]
    error = broken(lines, tampered)
    assert isinstance(error, CheckpointInvalid), error


def test_a_checkpoint_signed_by_another_key_is_refused() -> None:
    lines, checkpoints = build_log(4, 2)
    intruder = Ed25519PrivateKey.generate()
    forged = Checkpoint.sign(intruder, 3, entry_hash(lines[3])).to_line()
    error = broken(lines, checkpoints[:-1] + [forged])
    assert isinstance(error, CheckpointInvalid) and error.seq == 3
    assert "does not verify" in str(error)


def test_a_rewritten_and_relinked_tail_is_caught_by_the_signed_head() -> None:
    lines, checkpoints = build_log(6, 3)  # checkpoints at 2 and 5
    chain = AuditChain.from_lines(lines[:4])
    rewritten = lines[:4] + [chain.append(_event(40)).line, chain.append(_event(41)).line]
    error = broken(rewritten, checkpoints)
    assert isinstance(error, CheckpointMismatch) and error.seq == 5
    assert "3-5" in str(error)


def test_entries_after_the_last_checkpoint_are_refused_unless_allowed() -> None:
    lines, checkpoints = build_log(5, 2)  # checkpoints at 1, 3, 4
    error = broken(lines, checkpoints[:2])
    assert isinstance(error, UnsignedEntries) and error.seq == 4
    verdict = verify(lines, checkpoints[:2], PUBLIC, allow_unsigned_tail=True)
    assert (verdict.signed_through, verdict.unsigned_entries) == (3, 1)
    assert "NOT signed" in verdict.summary()
    assert isinstance(broken(lines, []), UnsignedEntries)


def test_a_changed_entry_before_an_unsigned_last_one_is_named() -> None:
    lines, checkpoints = build_log(3, 10)
    entry = json.loads(lines[1])
    entry["event"]["details"]["step"] = 99
    changed = AuditEntry.build(1, entry["prev"], AuditEvent.from_json(entry["event"])).line
    # Without a checkpoint of entry 2, a broken link between 1 and 2 is blamed on entry 1, the one before.
    error = broken([lines[0], changed, lines[2]], [])
    assert isinstance(error, EntryChanged) and error.seq == 1


def test_from_lines_refuses_to_extend_a_broken_chain() -> None:
    lines, _ = build_log(4, 10)
    with pytest.raises(EntriesRemoved) as caught:
        AuditChain.from_lines(lines[:1] + lines[2:])
    assert caught.value.seq == 1 and caught.value.count == 1
    chain = AuditChain.from_lines(lines)
    assert chain.next_seq == 4 and chain.head_hash == entry_hash(lines[-1])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "key_stolen"}, "unknown event kind 'key_stolen'"),
        ({"source": "somewhere"}, "unknown event source"),
        ({"time": "2026-05-01 12:00:00"}, "not RFC 3339 UTC"),
        ({"time": "2026-05-01T12:00:00+02:00"}, "not RFC 3339 UTC"),
        ({"time": "2026-13-01T12:00:00Z"}, "not a real date"),
        ({"run_id": ""}, "run_id"),
        ({"details": {"blob": b"bytes"}}, "details.blob is a bytes"),
        ({"details": {"n": 2**60}}, "safe integer range"),
        ({"details": {"x": [float("nan")]}}, "details.x[0] = nan is not a finite number"),
        ({"details": {1: "x"}}, "not a string"),
        ({"details": ["x"]}, "must be a dict"),
    ],
)
def test_bad_events_are_refused_with_a_clear_message(changes: dict, message: str) -> None:
    fields = {"kind": "run_started", "run_id": "r", "source": "airflow", "time": "2026-05-01T12:00:00Z", "details": {}}
    with pytest.raises(AuditEventInvalid, match=message.replace("[", r"\[").replace("]", r"\]")):
        AuditEvent(**{**fields, **changes})


def test_an_event_keeps_its_own_copy_of_the_details() -> None:
    details = {"a": [1]}
    event = AuditEvent.now("export", "pipeline", run_id=None, details=details)
    details["a"].append(2)
    assert event.details == {"a": [1]}
    assert AuditEvent.from_json(event.to_json()) == event


def test_the_signing_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "signing-key.pem"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_signing_key(path)
    assert public_key_pem(again) == public_key_pem(key)
    (tmp_path / "public.pem").write_bytes(public_key_pem(key))
    assert load_public_key(tmp_path / "public.pem", "test").public_bytes_raw() == key.public_key().public_bytes_raw()
    os.chmod(path, 0o644)
    with pytest.raises(AuditKeyError, match="accessible to other users"):
        load_or_create_signing_key(path)


def test_keys_of_the_wrong_kind_are_refused(tmp_path: Path, rsa_key) -> None:
    from cryptography.hazmat.primitives import serialization

    rsa_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "rsa.pem").write_bytes(rsa_pem)
    (tmp_path / "junk.pem").write_bytes(b"nonsense")
    with pytest.raises(PublicKeyInvalid, match="Ed25519"):
        load_public_key(tmp_path / "rsa.pem", "the audit public key")
    with pytest.raises(PublicKeyInvalid, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem", "the audit public key")


def test_decision_logs_become_events_correlated_honestly(tmp_path: Path) -> None:
    issuance, access = DecisionLog(tmp_path / "issuance.jsonl"), DecisionLog(tmp_path / "access.jsonl")
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    issuance.record(decision="issued", jti="j1", kid="k", nonce="run-nonce", measurement="m", host_data="h",
                    platform="simulated", policy_hash="p")  # fmt: skip
    issuance.record(decision="issued", jti="j2", kid="k", nonce="other-run", measurement="m", host_data="h",
                    platform="simulated", policy_hash="p")  # fmt: skip
    issuance.record(decision="refused", code="MeasurementNotAllowed", reason="bad measurement")
    access.record(decision="allowed", operation="release", key="kek", version="v1", identity="cvm", oid="o")
    access.record(decision="released", operation="release", key="kek", version="v1", identity="cvm", oid="o")
    access.record(decision="release-denied", operation="release", key="other", version="v1", identity="cvm",
                  oid="o", reason="policy")  # fmt: skip
    access.record(decision="denied", status=403, operation="get", key="", version="", identity="x", oid="o",
                  reason="no role")  # fmt: skip
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)

    appraised = attestation_events(tmp_path / "issuance.jsonl", run_id="r1", since=since, until=until,
                                   nonces={"run-nonce"})  # fmt: skip
    assert [(e.details["decision"], e.details["correlated_by"]) for e in appraised] == [
        ("issued", "nonce"),
        ("refused", "time-window"),
    ]
    assert all(e.kind == "evidence_appraised" and e.run_id == "r1" and e.source == "attestation" for e in appraised)

    vault = keyvault_events(tmp_path / "access.jsonl", run_id="r1", since=since, until=until, key_names={"kek"})
    assert [(e.kind.value, e.details["correlated_by"]) for e in vault] == [
        ("key_released", "time-window+key"),
        ("access_denied", "time-window"),
    ]
    later = until + datetime.timedelta(hours=1)
    assert keyvault_events(tmp_path / "access.jsonl", run_id="r1", since=later, until=later) == []
    assert attestation_events(tmp_path / "missing.jsonl", run_id="r1", since=since, until=until) == []
