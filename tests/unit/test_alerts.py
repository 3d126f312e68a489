"""Alert rules over audit events and task failures (securetrain.core.alerts)."""

from __future__ import annotations

import pytest

from securetrain.core.alerts import (
    AlertCategory,
    AlertConfigurationError,
    AlertThresholds,
    Severity,
    classify_failure,
    evaluate,
)
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource
from securetrain.core.errors import SecurityViolation
from securetrain.core.keyvault import KekPolicyMismatch
from securetrain.core.sealed.errors import SealedFileError


def _denied(second: int, identity: str = "intruder") -> AuditEvent:
    return AuditEvent(EventKind.ACCESS_DENIED, "run-1", EventSource.KEYVAULT, f"2026-05-01T12:{second // 60:02d}:{second % 60:02d}Z",
                      {"decision": "denied", "status": 403, "identity": identity, "key": "kek"})  # fmt: skip


def test_denials_below_the_threshold_raise_no_alert() -> None:
    assert evaluate([_denied(0), _denied(10)], AlertThresholds()) == []


def test_repeated_denials_within_the_window_alert_once_with_their_evidence() -> None:
    events = [_denied(0), _denied(100, "other"), _denied(200), _denied(250)]
    (alert,) = evaluate(events, AlertThresholds(access_denied_count=3, access_denied_window_s=300))
    assert alert.category is AlertCategory.REPEATED_ACCESS_DENIED and alert.severity is Severity.CRITICAL
    assert alert.count == 4 and alert.run_id == "run-1"
    assert (alert.first_seen, alert.last_seen) == ("2026-05-01T12:00:00Z", "2026-05-01T12:04:10Z")
    assert "intruder" in alert.summary and "other" in alert.summary
    assert len(alert.evidence) == 4


def test_denials_spread_wider_than_the_window_do_not_alert() -> None:
    events = [_denied(0), _denied(200), _denied(400), _denied(600)]
    assert evaluate(events, AlertThresholds(access_denied_count=3, access_denied_window_s=300)) == []
    (alert,) = evaluate(events, AlertThresholds(access_denied_count=2, access_denied_window_s=300))
    assert alert.count == 2


def test_each_security_failure_kind_is_classified() -> None:
    time = "2026-05-01T12:00:00Z"
    events = [
        AuditEvent(EventKind.EVIDENCE_APPRAISED, "r", EventSource.ATTESTATION, time,
                   {"decision": "refused", "code": "HostDataMismatch", "reason": "host data differs"}),
        AuditEvent(EventKind.EVIDENCE_APPRAISED, "r", EventSource.ATTESTATION, time, {"decision": "issued"}),
        AuditEvent(EventKind.KEY_DENIED, "r", EventSource.KEYVAULT, time, {"decision": "release-denied", "reason": "x"}),
        AuditEvent(EventKind.KEY_DENIED, "r", EventSource.TRAINER, time,
                   {"error": {"code": "KeyReleaseDenied", "message": "m", "security_violation": True}}),
        AuditEvent(EventKind.JOB_EVENT, "r", EventSource.TRAINER, time,
                   {"error": {"code": "CheckpointInvalid", "message": "tag mismatch", "security_violation": True}}),
        AuditEvent(EventKind.JOB_EVENT, "r", EventSource.TRAINER, time,
                   {"error": {"code": "DataValidationFailed", "message": "m", "security_violation": False}}),
        AuditEvent(EventKind.JOB_EVENT, "r", EventSource.TRAINER, time,
                   {"error": {"code": "SomethingNew", "message": "m", "security_violation": True}}),
        AuditEvent(EventKind.KEY_RELEASED, "r", EventSource.KEYVAULT, time, {"decision": "released"}),
    ]  # fmt: skip
    alerts = {alert.category: alert for alert in evaluate(events, AlertThresholds())}
    assert set(alerts) == {AlertCategory.ATTESTATION_FAILURE, AlertCategory.RELEASE_DENIED,
                           AlertCategory.SEAL_FAILURE, AlertCategory.SECURITY_VIOLATION}  # fmt: skip
    assert alerts[AlertCategory.RELEASE_DENIED].count == 2
    assert "host data differs" in alerts[AlertCategory.ATTESTATION_FAILURE].summary
    assert alerts[AlertCategory.SEAL_FAILURE].to_json()["evidence"][0]["details"]["error"]["code"] == "CheckpointInvalid"


def test_task_failures_are_classified_through_their_cause() -> None:
    try:
        try:
            raise KekPolicyMismatch("the KEK's release policy differs from the approved one")
        except KekPolicyMismatch as inner:
            raise RuntimeError("prepare_environment: security check failed") from inner
    except RuntimeError as outer:
        alert = classify_failure(outer, run_id="r", task_id="prepare_environment")
    assert alert.category is AlertCategory.POLICY_MISMATCH and alert.severity is Severity.CRITICAL
    assert "prepare_environment" in alert.summary

    seal = classify_failure(SealedFileError("tag mismatch in chunk 3"), run_id="r", task_id="check_data_security")
    assert seal.category is AlertCategory.SEAL_FAILURE
    other = classify_failure(SecurityViolation("unknown check"), run_id="r", task_id="t")
    assert other.category is AlertCategory.SECURITY_VIOLATION
    by_name = classify_failure(Exception("the training job j1 failed: AttestationRefused: HOST_DATA ..."),
                               run_id="r", task_id="train", security_check_failed=True)  # fmt: skip
    assert by_name.category is AlertCategory.ATTESTATION_FAILURE
    by_text = classify_failure(Exception("the TEE's agent is unhealthy"), run_id="r", task_id="enclave_health",
                               security_check_failed=True)  # fmt: skip
    assert by_text.category is AlertCategory.SECURITY_VIOLATION
    unflagged = classify_failure(Exception("mentions KeyReleaseDenied"), run_id="r", task_id="t")
    assert unflagged.category is AlertCategory.TASK_FAILED
    plain = classify_failure(TimeoutError("agent slow"), run_id="r", task_id="train")
    assert plain.category is AlertCategory.TASK_FAILED and plain.severity is Severity.WARNING


def test_thresholds_from_json_keep_defaults_and_refuse_bad_settings() -> None:
    assert AlertThresholds.from_json('{"access_denied_count": 5}') == AlertThresholds(access_denied_count=5)
    for text, message in [
        ("[1]", "not an object"),
        ("{", "not JSON"),
        ('{"access_denied_cout": 5}', "unknown alert threshold"),
        ('{"access_denied_count": 0}', "positive integer"),
        ('{"access_denied_window_s": true}', "positive integer"),
        ('{"access_denied_window_s": "60"}', "positive integer"),
    ]:
        with pytest.raises(AlertConfigurationError, match=message):
            AlertThresholds.from_json(text)


def test_thresholds_from_the_environment() -> None:
    assert AlertThresholds.from_environment({}) == AlertThresholds()
    value = '{"access_denied_window_s": 60}'
    assert AlertThresholds.from_environment({"SECURETRAIN_ALERT_THRESHOLDS": value}).access_denied_window_s == 60
