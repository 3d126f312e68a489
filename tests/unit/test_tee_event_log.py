"""The TEE's event log and the whole audit trail, offline: a log the TEE wrote verifies, and every edit an
orchestrator could make without the TEE's key (change, remove, reorder, append, re-sign, roll back) fails
naming what. The attestation authority is a local key with its JWKS, as in test_model_provenance."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.audit.chain import AuditChain
from securetrain.core.audit.checkpoints import Checkpoint, check_pinned, key_fingerprint, pinned_fingerprint
from securetrain.core.audit.errors import AuditKeyNotPinned, AuditKeyUntrusted, CheckpointInvalid, UnsignedEntries
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource
from securetrain.core.audit.tee_log import (
    TeeEventKind,
    TeeEventLog,
    TeeLogInvalid,
    audit_events,
    check_holds,
    collect_tee_logs,
    verify_tee_log,
)
from securetrain.core.audit.trail import verify_trail
from securetrain.core.model_provenance import JwksKeys, ProvenanceInvalid, verify_attestation_token
from tests.unit.test_model_provenance import authority, policy, tee_key, token  # noqa: F401 - fixtures
from securetrain.tee.attest import TeeKey

RUN = "manual__1"
SHA = "ab" * 32


def write_log(authority_key, key: TeeKey, log: TeeEventLog | None = None) -> TeeEventLog:
    """A job's log as the agent writes it: attested, key released, a checkpoint, the model."""
    log = log or TeeEventLog("job-1", RUN)
    for kind, details in [
        (TeeEventKind.ATTESTED, {"token": token(authority_key, key), "sequence": 0}),
        (TeeEventKind.KEY_RELEASED, {"kek_id": "https://vault.test/keys/kek/1"}),
        (TeeEventKind.CHECKPOINT_SEALED, {"epoch": 1, "step": 5, "blob": "c/e1", "sealed_sha256": SHA, "metrics": {"loss": 0.5}}),
        (TeeEventKind.MODEL_SEALED, {"blob": "m/model", "sealed_sha256": SHA, "plaintext_sha256": SHA}),
    ]:  # fmt: skip
        log.append(kind, details, key=key.private_key, kid=key.kid)
    return log


@pytest.fixture
def check(authority, policy):
    return lambda raw: verify_attestation_token(raw, policy, lambda _: authority[1])


@pytest.fixture
def document(authority, tee_key) -> dict[str, Any]:
    return write_log(authority[0], tee_key).to_json()


def verify(document: dict[str, Any], check) -> Any:
    return verify_tee_log(collect_tee_logs(audit_events(document))["job-1"], check)


def test_a_log_the_tee_wrote_verifies_and_survives_the_audit_log_verbatim(document, check) -> None:
    verdict = verify(document, check)
    assert verdict.entries == 4 and verdict.run_id == RUN
    assert verdict.kinds == {"attested": 1, "key_released": 1, "checkpoint_sealed": 1, "model_sealed": 1}
    events = audit_events(document)
    assert [e.kind for e in events] == [EventKind.EVIDENCE_APPRAISED, EventKind.KEY_RELEASED, EventKind.CHECKPOINT_WRITTEN,
                                        EventKind.MODEL_SEALED, EventKind.TEE_LOG_HEAD]  # fmt: skip
    # Through canonical JSON and back, as the audit log stores them: the same hashes.
    chain = AuditChain()
    stored = [AuditEvent.from_json(copy.deepcopy(chain.append(e).event.to_json())) for e in events]
    assert verify_tee_log(collect_tee_logs(stored)["job-1"], check).head_hash == verdict.head_hash


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda d: d["entries"][1]["details"].update(kek_id="https://vault.test/keys/other/1"), "does not link"),
        (lambda d: d["entries"][3]["details"].update(sealed_sha256="cd" * 32), "holds another entry there"),
        (lambda d: d["entries"].pop(0), "entry 0 of TEE log job-1 is missing"),
        (lambda d: d["entries"].pop(1), "entry 1 of TEE log job-1 is missing"),
        (lambda d: (d["entries"][1].update(seq=2), d["entries"][2].update(seq=1)), "does not link"),  # reordered
        (lambda d: d["head"]["head"].update(run_id="another-run"), "recorded for run"),
        (lambda d: d.update(head=None), "no head signed by the TEE"),
    ],
)
def test_any_change_without_the_tee_key_is_refused(document, check, tamper, message) -> None:
    tampered = copy.deepcopy(document)
    tamper(tampered)
    with pytest.raises(TeeLogInvalid, match=message):
        verify(tampered, check)


def test_an_appended_event_or_a_head_signed_by_an_unattested_key_is_refused(authority, tee_key, check) -> None:
    log = write_log(authority[0], tee_key)
    forged = TeeEventLog.from_json(log.to_json())
    stranger = TeeKey()
    forged.append(TeeEventKind.KEY_RELEASED, {"kek_id": "x"}, key=stranger.private_key, kid=stranger.kid)
    with pytest.raises(TeeLogInvalid, match="which no attestation token in the log before it attests"):
        verify(forged.to_json(), check)
    appended = forged.to_json()
    appended["head"] = log.to_json()["head"]  # keep the TEE's head: the new entry is then unsigned
    with pytest.raises(TeeLogInvalid, match="entries 4-4 of TEE log job-1 are not covered by a head"):
        verify(appended, check)


def test_a_token_the_authority_did_not_sign_is_refused(document, policy) -> None:
    keys = JwksKeys({"keys": []}, "an empty JWKS")
    with pytest.raises(ProvenanceInvalid, match="which an empty JWKS lacks"):
        verify(document, lambda raw: verify_attestation_token(raw, policy, lambda _: keys))


def test_a_resumed_job_signs_on_with_its_new_attested_key(authority, tee_key, check) -> None:
    log = write_log(authority[0], tee_key)
    resumed = TeeEventLog.from_json(log.to_json())
    new_key = TeeKey()
    resumed.append(TeeEventKind.ATTESTED, {"token": token(authority[0], new_key), "sequence": 1},
                   key=new_key.private_key, kid=new_key.kid)  # fmt: skip
    assert verify(resumed.to_json(), check).entries == 5


def test_the_statement_head_detects_a_rollback(authority, tee_key) -> None:
    log = write_log(authority[0], tee_key)
    reference = log.head.head.reference()
    check_holds(collect_tee_logs(audit_events(log.to_json())), reference, "the statement")
    rolled_back = log.to_json()
    del rolled_back["entries"][2:]
    rolled_back["head"] = None
    with pytest.raises(TeeLogInvalid, match="entry 2 of TEE log job-1 is missing"):
        check_holds(collect_tee_logs(audit_events(rolled_back)), reference, "the statement")
    with pytest.raises(TeeLogInvalid, match="holds none of the events of TEE log job-1"):
        check_holds({}, reference, "the statement")


def _stored(events: list[AuditEvent], key: Ed25519PrivateKey, signed_upto: int) -> tuple[list[bytes], list[bytes]]:
    chain = AuditChain()
    entries = [chain.append(event) for event in events]
    checkpoint = Checkpoint.sign(key, signed_upto, entries[signed_upto].hash)
    return [entry.line for entry in entries], [checkpoint.to_line()]


def test_the_trail_accepts_a_tail_only_the_tee_signed_and_nothing_else(document, check) -> None:
    key = Ed25519PrivateKey.generate()
    pipeline = AuditEvent.now(EventKind.RUN_STARTED, EventSource.PIPELINE, run_id=RUN)
    events = [pipeline, *audit_events(document)]
    lines, checkpoints = _stored(events, key, 0)
    verdict = verify_trail(lines, checkpoints, key.public_key(), check_token=check)
    assert verdict.tee_only_tail == 5 and verdict.tee_logs[0].entries == 4
    lines, checkpoints = _stored([*events, pipeline], key, 0)
    with pytest.raises(UnsignedEntries):
        verify_trail(lines, checkpoints, key.public_key(), check_token=check)
    with pytest.raises(CheckpointInvalid):
        verify_trail(lines, checkpoints, Ed25519PrivateKey.generate().public_key(), check_token=check)


def test_the_audit_key_must_be_pinned_and_be_the_pinned_one() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(AuditKeyNotPinned, match="no audit key is pinned"):
        pinned_fingerprint(None, {})
    with pytest.raises(AuditKeyNotPinned, match="not 64 hex digits"):
        pinned_fingerprint("abc", {})
    pin = pinned_fingerprint(None, {"SECURETRAIN_AUDIT_KEY_FINGERPRINT": key_fingerprint(key).upper()})
    check_pinned(key, pin)
    with pytest.raises(AuditKeyUntrusted, match="not the pinned"):
        check_pinned(Ed25519PrivateKey.generate().public_key(), pin)
