"""Audit events: what happened, in which run, reported by whom, when, with which plain-JSON details.

Kinds and sources are fixed sets, and times have one spelling (RFC 3339 UTC, ``Z``), so that the canonical
bytes, and the hashes, are the same whoever records an event (docs/audit.md, "Events").
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from securetrain.core.audit.errors import AuditEventInvalid


class EventKind(enum.StrEnum):
    """What an audit event records."""

    RUN_STARTED = "run_started"
    EVIDENCE_APPRAISED = "evidence_appraised"
    KEY_RELEASED = "key_released"
    KEY_DENIED = "key_denied"
    DATA_VALIDATED = "data_validated"
    CHECKPOINT_WRITTEN = "checkpoint_written"
    MODEL_SEALED = "model_sealed"
    MODEL_REGISTERED = "model_registered"
    ACCESS_DENIED = "access_denied"
    CLEANUP_DONE = "cleanup_done"
    TASK_STATE = "task_state"
    DAG_RUN_STATE = "dag_run_state"
    JOB_EVENT = "job_event"
    EXPORT = "export"
    ROTATION = "rotation"
    RETENTION = "retention"
    TEE_LOG_HEAD = "tee_log_head"
    GOVERNANCE = "governance"  # a contract enforced, revoked, or a job refused under it
    PRIVACY_BUDGET = "privacy_budget"  # ε reserved or spent against a contract's budget


class EventSource(enum.StrEnum):
    """Which part of the system reported the event."""

    AIRFLOW = "airflow"
    KEYVAULT = "keyvault"
    ATTESTATION = "attestation"
    TRAINER = "trainer"
    PIPELINE = "pipeline"
    TEE = "tee"


# RFC 3339, UTC only ("Z"), optional fraction of a second.
_UTC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
_FIELDS = ("details", "kind", "run_id", "source", "time")


def rfc3339_utc(moment: datetime.datetime) -> str:
    """``moment`` as RFC 3339 UTC with microseconds, e.g. ``2026-05-01T12:00:00.000000Z``.

    Raises:
        AuditEventInvalid: ``moment`` has no time zone (a naive time is ambiguous).
    """
    if moment.tzinfo is None:
        raise AuditEventInvalid(f"time {moment.isoformat()} has no time zone; give an aware datetime (UTC)")
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_time(value: object) -> str:
    """``value`` if it is an RFC 3339 UTC time (``Z`` suffix) of a real instant; :class:`AuditEventInvalid` if not."""
    if not isinstance(value, str) or not _UTC_TIME.fullmatch(value):
        raise AuditEventInvalid(
            f"event time {value!r} is not RFC 3339 UTC like 2026-05-01T12:00:00Z (use rfc3339_utc())"
        )
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AuditEventInvalid(f"event time {value!r} is not a real date and time") from None
    return value


def _check_json(value: object, path: str) -> None:
    """Raise unless ``value`` is plain JSON that RFC 8785 can canonicalize (finite numbers, safe integers)."""
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise AuditEventInvalid(f"{path} = {value} is outside JSON's safe integer range; store it as a string")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditEventInvalid(f"{path} = {value} is not a finite number; JSON cannot hold it")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditEventInvalid(f"{path} has a key {key!r} that is not a string")
            _check_json(item, f"{path}.{key}")
        return
    raise AuditEventInvalid(
        f"{path} is a {type(value).__name__}; event details hold only JSON types (dict, list, str, int, float, "
        "bool, None)"
    )


def _member(enum_type: type[enum.StrEnum], value: object, what: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise AuditEventInvalid(f"unknown event {what} {value!r}; it is one of: {allowed}") from None


@dataclass(frozen=True)
class AuditEvent:
    """One security-relevant event.

    ``details`` is deep-copied on construction, so changing the caller's dict afterwards does not change
    the event. Build one with :meth:`now` for an event happening now.
    """

    kind: EventKind
    run_id: str | None
    source: EventSource
    time: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _member(EventKind, self.kind, "kind"))
        object.__setattr__(self, "source", _member(EventSource, self.source, "source"))
        if self.run_id is not None and (not isinstance(self.run_id, str) or not self.run_id):
            raise AuditEventInvalid(f"run_id {self.run_id!r} must be a non-empty string or None")
        check_time(self.time)
        if not isinstance(self.details, dict):
            raise AuditEventInvalid(f"event details must be a dict, not {type(self.details).__name__}")
        _check_json(self.details, "details")
        object.__setattr__(self, "details", json.loads(json.dumps(self.details)))

    @classmethod
    def now(
        cls,
        kind: EventKind | str,
        source: EventSource | str,
        *,
        run_id: str | None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """An event of ``kind`` from ``source`` happening now."""
        return cls(
            kind=kind,  # type: ignore[arg-type]  # coerced and checked in __post_init__
            run_id=run_id,
            source=source,  # type: ignore[arg-type]
            time=rfc3339_utc(datetime.datetime.now(datetime.UTC)),
            details=dict(details or {}),
        )

    def to_json(self) -> dict[str, Any]:
        """The event as the JSON object stored in an entry."""
        return {
            "details": self.details,
            "kind": self.kind.value,
            "run_id": self.run_id,
            "source": self.source.value,
            "time": self.time,
        }

    @classmethod
    def from_json(cls, value: object) -> AuditEvent:
        """Parse an event as stored; exactly the five fields, each valid.

        Raises:
            AuditEventInvalid: a field is missing, extra or invalid.
        """
        if not isinstance(value, dict) or tuple(sorted(value)) != _FIELDS:
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise AuditEventInvalid(f"an event is an object with exactly the fields {list(_FIELDS)}, got {got}")
        return cls(
            kind=value["kind"],
            run_id=value["run_id"],
            source=value["source"],
            time=value["time"],
            details=value["details"],
        )
