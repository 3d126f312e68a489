"""Security alerts: which events of a run (and which task failures) a person must be told about.

:func:`evaluate` reads a run's audit events, :func:`classify_failure` the exception a task failed with; both
return :class:`Alert` values, which the notifiers in ``securetrain/airflow/notifiers.py`` deliver. This module
decides *what* is an alert; it sends nothing and imports no Airflow. The categories, the thresholds, and why
errors are recognised by their class *name* (a name missing from the table can lower an alert's precision,
never suppress it) are in docs/monitoring.md ("Alerts").
"""

from __future__ import annotations

import datetime
import enum
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from securetrain.core.audit.events import AuditEvent, EventKind, rfc3339_utc
from securetrain.core.errors import ConfigurationError, SecurityViolation

#: The Airflow Variable with the thresholds as a JSON object (Airflow also reads it from the environment
#: as ``AIRFLOW_VAR_SECURETRAIN_ALERT_THRESHOLDS``).
THRESHOLDS_VARIABLE = "securetrain_alert_thresholds"
#: The same JSON object for code running outside Airflow (the command line).
THRESHOLDS_ENVIRONMENT = "SECURETRAIN_ALERT_THRESHOLDS"
#: At most this many events are quoted as evidence in one alert; ``count`` says how many there were.
EVIDENCE_LIMIT = 10


class AlertConfigurationError(ConfigurationError):
    """The alert thresholds are not a JSON object of known, positive settings."""


class AlertCategory(enum.StrEnum):
    """What kind of security event an alert reports."""

    REPEATED_ACCESS_DENIED = "repeated_access_denied"
    ATTESTATION_FAILURE = "attestation_failure"
    POLICY_MISMATCH = "policy_mismatch"
    RELEASE_DENIED = "release_denied"
    SEAL_FAILURE = "seal_failure"
    SECURITY_VIOLATION = "security_violation"
    TASK_FAILED = "task_failed"


class Severity(enum.StrEnum):
    """``critical``: a security check said no; ``warning``: a stage failed for another reason."""

    CRITICAL = "critical"
    WARNING = "warning"


# Error class names (securetrain's, operators', the trainer's) and what failing with one means.
_CATEGORY_BY_ERROR: dict[str, AlertCategory] = {
    # attestation: evidence refused, token or report rejected
    "PolicyDenied": AlertCategory.ATTESTATION_FAILURE,
    "AttestationRefused": AlertCategory.ATTESTATION_FAILURE,
    "CvmAttestationRefused": AlertCategory.ATTESTATION_FAILURE,
    "TokenRejected": AlertCategory.ATTESTATION_FAILURE,
    "SnpEvidenceError": AlertCategory.ATTESTATION_FAILURE,
    # the KEK's release policy is not the approved one
    "KekPolicyMismatch": AlertCategory.POLICY_MISMATCH,
    "KekWithoutPolicy": AlertCategory.POLICY_MISMATCH,
    # Key Vault said no to the TEE, or the released key did not check out
    "ReleaseDenied": AlertCategory.RELEASE_DENIED,
    "KeyReleaseDenied": AlertCategory.RELEASE_DENIED,
    "ReleasedKeyRejected": AlertCategory.RELEASE_DENIED,
    # a sealed blob failed its checks
    "SealedFileError": AlertCategory.SEAL_FAILURE,
    "DatasetCheckFailed": AlertCategory.SEAL_FAILURE,
    "ModelRejected": AlertCategory.SEAL_FAILURE,
    "CheckpointInvalid": AlertCategory.SEAL_FAILURE,
}

# An error name as a word of a message: how the training task reports the job's error (``code: message``).
_ERROR_NAME_IN_TEXT = re.compile(r"\b(" + "|".join(sorted(_CATEGORY_BY_ERROR)) + r")\b")

_DEFAULT_SUMMARY = {
    AlertCategory.ATTESTATION_FAILURE: "attestation failed: the TEE's evidence or token was refused",
    AlertCategory.POLICY_MISMATCH: "the key's release policy is not the approved policy",
    AlertCategory.RELEASE_DENIED: "Key Vault refused to release the key",
    AlertCategory.SEAL_FAILURE: "a sealed blob failed its integrity checks",
    AlertCategory.SECURITY_VIOLATION: "a security check failed",
}


@dataclass(frozen=True)
class AlertThresholds:
    """When repeated events become an alert. Defaults: 3 denials within 300 s.

    Every other category alerts at its first event: one refused attestation is already worth a look.
    """

    access_denied_count: int = 3
    access_denied_window_s: int = 300

    def __post_init__(self) -> None:
        for setting in fields(self):
            value = getattr(self, setting.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AlertConfigurationError(f"alert threshold {setting.name} = {value!r} is not a positive integer")

    @classmethod
    def from_json(cls, text: str) -> AlertThresholds:
        """Thresholds from a JSON object; settings left out keep their defaults.

        Raises:
            AlertConfigurationError: not a JSON object, an unknown setting, or a value that is not a positive integer.
        """
        try:
            value = json.loads(text)
        except ValueError:
            raise AlertConfigurationError(f"the alert thresholds are not JSON: {text[:80]!r}") from None
        if not isinstance(value, dict):
            raise AlertConfigurationError(f"the alert thresholds are a JSON {type(value).__name__}, not an object")
        known = {setting.name for setting in fields(cls)}
        if unknown := sorted(set(value) - known):
            raise AlertConfigurationError(
                f"unknown alert threshold(s) {unknown}; the settings are {sorted(known)}"
            )
        return cls(**value)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> AlertThresholds:
        """Thresholds from ``$SECURETRAIN_ALERT_THRESHOLDS`` (JSON), or the defaults when it is unset."""
        text = environ.get(THRESHOLDS_ENVIRONMENT)
        return cls.from_json(text) if text else cls()


@dataclass(frozen=True)
class Alert:
    """One alert: what happened (``category``), how bad, in which run, and the events that show it."""

    category: AlertCategory
    severity: Severity
    run_id: str | None
    summary: str
    count: int = 1
    first_seen: str | None = None
    last_seen: str | None = None
    evidence: tuple[Mapping[str, Any], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The alert as a JSON object (what the webhook posts)."""
        return {**asdict(self), "evidence": [dict(item) for item in self.evidence]}


def _category_of_error_name(name: object) -> AlertCategory | None:
    return _CATEGORY_BY_ERROR.get(name) if isinstance(name, str) else None


def _event_category(event: AuditEvent) -> AlertCategory | None:
    """The category of a single event that is itself a security failure, or None."""
    details = event.details
    if event.kind is EventKind.EVIDENCE_APPRAISED and details.get("decision") == "refused":
        return AlertCategory.ATTESTATION_FAILURE
    error = details.get("error")
    if isinstance(error, dict) and error.get("security_violation"):
        return _category_of_error_name(error.get("code")) or (
            AlertCategory.RELEASE_DENIED if event.kind is EventKind.KEY_DENIED else AlertCategory.SECURITY_VIOLATION
        )
    if event.kind is EventKind.KEY_DENIED:
        return AlertCategory.RELEASE_DENIED
    return None


def _evidence(event: AuditEvent) -> dict[str, Any]:
    return {"kind": event.kind.value, "source": event.source.value, "time": event.time, "details": event.details}


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _densest_window(times: list[datetime.datetime], window: datetime.timedelta) -> tuple[int, int]:
    """The (start, end) indexes, end exclusive, of the most events within ``window`` (``times`` sorted)."""
    best, start = (0, 0), 0
    for end, moment in enumerate(times):
        while moment - times[start] > window:
            start += 1
        if end + 1 - start > best[1] - best[0]:
            best = (start, end + 1)
    return best


def _repeated_denials(run_id: str | None, denials: list[AuditEvent], thresholds: AlertThresholds) -> Alert | None:
    denials = sorted(denials, key=lambda event: _parse_time(event.time))
    times = [_parse_time(event.time) for event in denials]
    start, end = _densest_window(times, datetime.timedelta(seconds=thresholds.access_denied_window_s))
    if end - start < thresholds.access_denied_count:
        return None
    burst = denials[start:end]
    identities = sorted({str(event.details.get("identity")) for event in burst if event.details.get("identity")})
    return Alert(
        AlertCategory.REPEATED_ACCESS_DENIED,
        Severity.CRITICAL,
        run_id,
        f"{len(burst)} requests denied within {thresholds.access_denied_window_s} s "
        f"(threshold {thresholds.access_denied_count}); identities: {', '.join(identities) or 'unauthenticated'}",
        count=len(burst),
        first_seen=burst[0].time,
        last_seen=burst[-1].time,
        evidence=tuple(_evidence(event) for event in burst[:EVIDENCE_LIMIT]),
    )


def evaluate(events: Iterable[AuditEvent], thresholds: AlertThresholds, *, run_id: str | None = None) -> list[Alert]:
    """The alerts that ``events`` (one run's, typically) call for: one per category, with its evidence.

    ``run_id`` labels the alerts; by default the run of the first event.
    """
    events = list(events)
    if run_id is None and events:
        run_id = events[0].run_id
    by_category: dict[AlertCategory, list[AuditEvent]] = {}
    denials = []
    for event in events:
        if event.kind is EventKind.ACCESS_DENIED:
            denials.append(event)
        elif (category := _event_category(event)) is not None:
            by_category.setdefault(category, []).append(event)
    alerts = []
    if denials and (alert := _repeated_denials(run_id, denials, thresholds)) is not None:
        alerts.append(alert)
    for category, found in by_category.items():
        found.sort(key=lambda event: _parse_time(event.time))
        reason = found[0].details.get("reason") or (found[0].details.get("error") or {}).get("message")
        summary = _DEFAULT_SUMMARY[category] + (f": {reason}" if reason else "")
        alerts.append(
            Alert(category, Severity.CRITICAL, run_id, summary, count=len(found), first_seen=found[0].time,
                  last_seen=found[-1].time, evidence=tuple(_evidence(event) for event in found[:EVIDENCE_LIMIT]))
        )  # fmt: skip
    return alerts


def _causes(error: BaseException) -> Iterable[BaseException]:
    """``error`` and the exceptions it was raised from, outermost first (cycles cut)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify_failure(
    error: BaseException | None, *, run_id: str | None, task_id: str, security_check_failed: bool = False
) -> Alert:
    """The alert for task ``task_id`` failing with ``error``.

    ``security_check_failed``: the task failed a security check even though no securetrain error is in
    ``error``'s chain (the training task re-raises the job's error by name, as text: then the first known
    error name in the message decides the category). Without either, the alert is a ``task_failed`` warning.
    """
    now = rfc3339_utc(datetime.datetime.now(datetime.UTC))
    chain = list(_causes(error)) if error is not None else []
    category = None
    for cause in chain:
        for klass in type(cause).__mro__:
            if (category := _category_of_error_name(klass.__name__)) is not None:
                break
        if category is not None:
            break
    if category is None and security_check_failed and (named := _ERROR_NAME_IN_TEXT.search(str(error))):
        category = _CATEGORY_BY_ERROR[named.group(1)]
    if category is None and (security_check_failed or any(isinstance(cause, SecurityViolation) for cause in chain)):
        category = AlertCategory.SECURITY_VIOLATION
    message = f"{type(error).__name__}: {error}" if error is not None else "no error recorded"
    if category is None:
        return Alert(AlertCategory.TASK_FAILED, Severity.WARNING, run_id, f"task {task_id} failed: {message}",
                     first_seen=now, last_seen=now, evidence=({"task_id": task_id},))  # fmt: skip
    return Alert(category, Severity.CRITICAL, run_id, f"task {task_id}: {_DEFAULT_SUMMARY[category]}: {message}",
                 first_seen=now, last_seen=now, evidence=({"task_id": task_id},))  # fmt: skip
