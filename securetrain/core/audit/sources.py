"""Audit events from the services' decision logs: the Key Vault access log and the attestation issuance log.

Both are JSON lines, each with ``time`` (Unix seconds) and ``decision``. What each carries decides how an
event is tied to a run, and each event's ``details.correlated_by`` says how (``nonce``, ``time-window`` or
``time-window+key``): docs/audit.md ("Sources").
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from securetrain.core.audit.events import AuditEvent, EventKind, EventSource, rfc3339_utc
from securetrain.core.errors import ConfigurationError, SecuretrainError



class DecisionLogMalformed(SecuretrainError):
    """A line of a stand-in's decision log is not a JSON object with a numeric time and a decision."""


def read_decision_log(path: Path) -> Iterator[tuple[float, dict[str, Any]]]:
    """Yield ``(time, line)`` for each line of the decision log at ``path``; nothing if it does not exist yet
    (no decision was made).

    Raises:
        DecisionLogMalformed: a line is malformed (named by number): the log is not trusted past it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigurationError(f"cannot read the decision log {path}: {exc.strerror}") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        try:
            line = json.loads(raw)
        except ValueError:
            raise DecisionLogMalformed(f"{path} line {number} is not JSON") from None
        if (
            not isinstance(line, dict)
            or not isinstance(line.get("time"), (int, float))
            or isinstance(line.get("time"), bool)
            or not isinstance(line.get("decision"), str)
        ):
            raise DecisionLogMalformed(f"{path} line {number} lacks a numeric 'time' or a 'decision'")
        yield float(line["time"]), line


def _utc(seconds: float) -> str:
    return rfc3339_utc(datetime.datetime.fromtimestamp(seconds, datetime.UTC))


def _in_window(moment: float, since: datetime.datetime, until: datetime.datetime) -> bool:
    return since.timestamp() <= moment <= until.timestamp()


def _check_window(since: datetime.datetime, until: datetime.datetime) -> None:
    if since.tzinfo is None or until.tzinfo is None:
        raise ConfigurationError("the time window needs time-zone-aware datetimes (UTC)")
    if until < since:
        raise ConfigurationError(f"the time window ends ({until.isoformat()}) before it starts ({since.isoformat()})")


def attestation_events(
    path: Path,
    *,
    run_id: str,
    since: datetime.datetime,
    until: datetime.datetime,
    nonces: Collection[str] | None = None,
) -> list[AuditEvent]:
    """``evidence_appraised`` events for run ``run_id`` from the attestation issuance log at ``path``.

    Issued tokens in the window count if ``nonces`` is None or holds their nonce; refusals in the window
    always count (they carry no nonce to tell runs apart), marked as correlated by time only.
    """
    _check_window(since, until)
    events = []
    for moment, line in read_decision_log(path):
        if not _in_window(moment, since, until):
            continue
        details = {key: value for key, value in line.items() if key != "time"}
        if line["decision"] == "issued":
            if nonces is not None and line.get("nonce") not in nonces:
                continue
            details["correlated_by"] = "time-window" if nonces is None else "nonce"
        else:
            details["correlated_by"] = "time-window"
        events.append(
            AuditEvent(EventKind.EVIDENCE_APPRAISED, run_id, EventSource.ATTESTATION, _utc(moment), details)
        )
    return events


_KEYVAULT_KINDS = {
    "released": EventKind.KEY_RELEASED,
    "release-denied": EventKind.KEY_DENIED,
    "denied": EventKind.ACCESS_DENIED,
}


def keyvault_events(
    path: Path,
    *,
    run_id: str,
    since: datetime.datetime,
    until: datetime.datetime,
    key_names: Collection[str] | None = None,
) -> list[AuditEvent]:
    """``key_released``, ``key_denied`` and ``access_denied`` events for run ``run_id`` from the Key Vault
    access log at ``path``: decisions in the window, on one of ``key_names`` if given.

    Denied requests that name no key (listing keys) count whatever ``key_names`` says: a refused caller
    in the run's window is worth a reviewer's look.
    """
    _check_window(since, until)
    events = []
    for moment, line in read_decision_log(path):
        kind = _KEYVAULT_KINDS.get(line["decision"])
        if kind is None or not _in_window(moment, since, until):
            continue
        key = line.get("key") or None
        if key_names is not None and key is not None and key not in key_names:
            continue
        details = {name: value for name, value in line.items() if name != "time"}
        details["correlated_by"] = "time-window+key" if key_names is not None and key is not None else "time-window"
        events.append(AuditEvent(kind, run_id, EventSource.KEYVAULT, _utc(moment), details))
    return events
