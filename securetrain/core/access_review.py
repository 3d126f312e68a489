"""Access review: who holds which Key Vault role, and what each identity did with it in a period.

The sources (role assignments, the vault's access log, the audit logs, each verified first) and the findings
a reviewer should look at are in docs/maintenance.md ("access_review"); every source is read-only.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from securetrain.core.audit.events import AuditEvent
from securetrain.core.errors import ConfigurationError

REPORT_SCHEMA = "securetrain.access-review/v1"


class RoleAssignmentsInvalid(ConfigurationError):
    """The role assignments file is missing or malformed."""


@dataclass(frozen=True)
class RoleAssignment:
    """One role held by one principal."""

    principal_id: str
    principal_name: str
    role: str


def load_role_assignments(path: Path) -> list[RoleAssignment]:
    """The assignments in ``path``; :class:`RoleAssignmentsInvalid` naming what is wrong."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RoleAssignmentsInvalid(f"no role assignments at {path}: is the vault's roles file configured?") from None
    except ValueError as exc:
        raise RoleAssignmentsInvalid(f"{path} is not JSON: {exc}") from None
    items = document.get("assignments") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise RoleAssignmentsInvalid(f'{path} is not {{"assignments": [...]}}')
    assignments = []
    for number, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k] for k in ("principalId", "principalName", "role")):
            raise RoleAssignmentsInvalid(f"{path} assignment {number} lacks a principalId, principalName or role")
        assignments.append(RoleAssignment(item["principalId"], item["principalName"], item["role"]))
    return assignments


@dataclass
class IdentityActivity:
    """What one identity (by object id) holds and did in the period."""

    object_id: str
    names: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    operations: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    keys: set[str] = field(default_factory=set)
    denials: list[dict[str, Any]] = field(default_factory=list)
    first_seen: float | None = None
    last_seen: float | None = None

    def findings(self) -> list[str]:
        """What a reviewer should look at for this identity."""
        found = []
        if not self.roles and self.decisions:
            found.append("made requests but holds no role assignment")
        if self.roles and not self.decisions:
            found.append(f"holds {', '.join(sorted(self.roles))} but used it not once in the period: consider removing it")
        denied = self.decisions["denied"] + self.decisions["release-denied"]
        if denied:
            found.append(f"{denied} denied request(s)")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "object_id": self.object_id,
            "names": sorted(self.names),
            "roles": sorted(self.roles),
            "requests": sum(self.decisions.values()),
            "operations": dict(sorted(self.operations.items())),
            "decisions": dict(sorted(self.decisions.items())),
            "keys": sorted(self.keys),
            "first_seen": _utc(self.first_seen),
            "last_seen": _utc(self.last_seen),
            "denials": self.denials,
            "findings": self.findings(),
        }


def _utc(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditLogSummary:
    """One audit log as the review saw it: verified or not, and its events in the period by kind."""

    log: str
    verified: bool
    detail: str
    events_by_kind: dict[str, int]


@dataclass
class AccessReview:
    """The review of one period."""

    since: datetime.datetime
    until: datetime.datetime
    identities: list[IdentityActivity]
    audit_logs: list[AuditLogSummary]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "identities": [identity.to_json() for identity in self.identities],
            "audit_logs": [asdict(summary) for summary in self.audit_logs],
            "findings": [
                f"{'/'.join(sorted(identity.names)) or identity.object_id}: {finding}"
                for identity in self.identities
                for finding in identity.findings()
            ]
            + [f"audit log {s.log} does not verify: {s.detail}" for s in self.audit_logs if not s.verified],
        }


def review_access(
    assignments: Iterable[RoleAssignment],
    access_log: Iterable[tuple[float, dict[str, Any]]],
    audit_logs: Iterable[AuditLogSummary],
    *,
    since: datetime.datetime,
    until: datetime.datetime,
) -> AccessReview:
    """Join role assignments with the access log's decisions in ``[since, until]``, one entry per identity."""
    if since >= until:
        raise ConfigurationError(f"the review period is empty: {since.isoformat()} is not before {until.isoformat()}")
    identities: dict[str, IdentityActivity] = {}

    def identity(object_id: str) -> IdentityActivity:
        return identities.setdefault(object_id, IdentityActivity(object_id))

    for assignment in assignments:
        entry = identity(assignment.principal_id)
        entry.names.add(assignment.principal_name)
        entry.roles.add(assignment.role)
    start, end = since.timestamp(), until.timestamp()
    for moment, line in access_log:
        if not start <= moment <= end:
            continue
        # A request without a valid token has no object id: it is grouped as "unauthenticated".
        entry = identity(str(line.get("oid") or "unauthenticated"))
        if line.get("identity"):
            entry.names.add(str(line["identity"]))
        decision = str(line["decision"])
        entry.decisions[decision] += 1
        entry.operations[str(line.get("operation") or "unknown")] += 1
        if line.get("key"):
            entry.keys.add(str(line["key"]))
        if decision in ("denied", "release-denied"):
            entry.denials.append({"time": _utc(moment), "operation": line.get("operation"), "key": line.get("key"),
                                  "reason": line.get("reason")})  # fmt: skip
        entry.first_seen = moment if entry.first_seen is None else min(entry.first_seen, moment)
        entry.last_seen = moment if entry.last_seen is None else max(entry.last_seen, moment)
    ordered = sorted(identities.values(), key=lambda a: (sorted(a.names) or [a.object_id], a.object_id))
    return AccessReview(since, until, ordered, list(audit_logs))


def summarize_audit_log(
    log: str, events: Iterable[AuditEvent], *, since: datetime.datetime, until: datetime.datetime
) -> AuditLogSummary:
    """A verified log's events in the period, counted by kind."""
    kinds: Counter[str] = Counter()
    for event in events:
        moment = datetime.datetime.fromisoformat(event.time)
        if since <= moment <= until:
            kinds[str(event.kind)] += 1
    return AuditLogSummary(log, True, "verified", dict(sorted(kinds.items())))


def render_markdown(review: AccessReview) -> str:
    """The review as Markdown for a person: findings first, then identities and audit logs."""
    report = review.to_json()
    lines = [
        f"# Access review {review.since.date().isoformat()} to {review.until.date().isoformat()}",
        "",
        "## Findings",
        "",
    ]
    lines += [f"- {finding}" for finding in report["findings"]] or ["- none"]
    lines += ["", "## Identities", "", "| identity | object id | roles | requests | operations | denied | keys |",
              "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for entry in report["identities"]:
        operations = ", ".join(f"{name} x{count}" for name, count in entry["operations"].items()) or "-"
        denied = entry["decisions"].get("denied", 0) + entry["decisions"].get("release-denied", 0)
        lines.append(
            f"| {', '.join(entry['names']) or '?'} | `{entry['object_id']}` | {', '.join(entry['roles']) or '**none**'} "
            f"| {entry['requests']} | {operations} | {denied} | {', '.join(entry['keys']) or '-'} |"
        )
    lines += ["", "## Audit logs", "", "| log | verified | events in the period |", "| --- | --- | --- |"]
    for summary in report["audit_logs"]:
        kinds = ", ".join(f"{kind} x{count}" for kind, count in summary["events_by_kind"].items()) or "-"
        lines.append(f"| {summary['log']} | {'yes' if summary['verified'] else '**no**: ' + summary['detail']} | {kinds} |")
    return "\n".join(lines) + "\n"

