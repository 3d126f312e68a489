"""Access review: role assignments joined with the vault's access log and the audit logs."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from securetrain.core.access_review import (
    AuditLogSummary,
    RoleAssignment,
    RoleAssignmentsInvalid,
    load_role_assignments,
    render_markdown,
    review_access,
    summarize_audit_log,
)
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource
from securetrain.core.errors import ConfigurationError

UNTIL = datetime.datetime(2026, 6, 8, tzinfo=datetime.UTC)
SINCE = UNTIL - datetime.timedelta(days=7)
ASSIGNMENTS = [RoleAssignment("oid-p", "pipeline", "Key Vault Crypto Officer"),
               RoleAssignment("oid-c", "cvm", "Key Vault Crypto Service Release User"),
               RoleAssignment("oid-r", "key-rotator", "Key Vault Crypto User")]  # fmt: skip


def at(days_before_until: float) -> float:
    return (UNTIL - datetime.timedelta(days=days_before_until)).timestamp()


def line(decision: str, identity: str | None, oid: str | None, operation: str, key: str = "securetrain-kek") -> dict:
    return {"decision": decision, "identity": identity, "oid": oid, "operation": operation, "key": key,
            "version": "v1", "reason": "no role with the action" if "denied" in decision else None}  # fmt: skip


def test_each_identity_gets_its_roles_requests_and_findings() -> None:
    access = [(at(1), line("allowed", "pipeline", "oid-p", "get")),
              (at(2), line("allowed", "pipeline", "oid-p", "get")),
              (at(1), line("released", "cvm", "oid-c", "release")),
              (at(0.5), line("release-denied", "cvm", "oid-c", "release")),
              (at(0.2), line("denied", "intruder", "oid-x", "release")),
              (at(3), line("denied", None, None, "list", key="")),
              (at(30), line("allowed", "key-rotator", "oid-r", "unwrapKey"))]  # fmt: skip
    review = review_access(ASSIGNMENTS, access, [], since=SINCE, until=UNTIL).to_json()
    by_name = {"/".join(entry["names"]) or entry["object_id"]: entry for entry in review["identities"]}
    assert by_name["pipeline"]["operations"] == {"get": 2} and by_name["pipeline"]["roles"] == ["Key Vault Crypto Officer"]
    assert by_name["cvm"]["decisions"] == {"release-denied": 1, "released": 1}
    assert by_name["cvm"]["denials"][0]["reason"] == "no role with the action"
    assert by_name["key-rotator"]["requests"] == 0  # its only request was before the period
    assert by_name["unauthenticated"]["decisions"] == {"denied": 1}
    assert by_name["intruder"]["findings"] == ["made requests but holds no role assignment", "1 denied request(s)"]
    assert "key-rotator: holds Key Vault Crypto User but used it not once in the period: consider removing it" in review["findings"]
    assert "cvm: 1 denied request(s)" in review["findings"]
    assert by_name["pipeline"]["first_seen"] == "2026-06-06T00:00:00Z" and by_name["pipeline"]["findings"] == []


def test_audit_logs_are_counted_in_the_period_and_a_broken_one_is_a_finding() -> None:
    inside = AuditEvent(EventKind.ROTATION, None, EventSource.PIPELINE, "2026-06-07T00:00:00Z")
    outside = AuditEvent(EventKind.KEY_RELEASED, "run", EventSource.TRAINER, "2026-05-01T00:00:00Z")
    verified = summarize_audit_log("run-1", [inside, outside, inside], since=SINCE, until=UNTIL)
    assert verified.events_by_kind == {"rotation": 2}
    broken = AuditLogSummary("run-2", False, "entry 3 was changed", {})
    review = review_access([], [], [verified, broken], since=SINCE, until=UNTIL)
    assert review.to_json()["findings"] == ["audit log run-2 does not verify: entry 3 was changed"]
    markdown = render_markdown(review)
    assert "| run-1 | yes | rotation x2 |" in markdown and "| run-2 | **no**: entry 3 was changed | - |" in markdown


def test_markdown_lists_findings_first_and_every_identity() -> None:
    review = review_access(ASSIGNMENTS, [(at(1), line("allowed", "pipeline", "oid-p", "get"))], [], since=SINCE, until=UNTIL)
    markdown = render_markdown(review)
    assert markdown.index("## Findings") < markdown.index("## Identities")
    assert "| pipeline | `oid-p` | Key Vault Crypto Officer | 1 | get x1 | 0 | securetrain-kek |" in markdown


def test_an_empty_period_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="the review period is empty"):
        review_access([], [], [], since=UNTIL, until=UNTIL)


def test_role_assignments_file(tmp_path: Path) -> None:
    path = tmp_path / "roles.json"
    path.write_text(json.dumps({"assignments": [{"principalId": "a", "principalName": "pipeline", "role": "R"}]}))
    assert load_role_assignments(path) == [RoleAssignment("a", "pipeline", "R")]
    path.write_text(json.dumps({"assignments": [{"principalId": "a", "role": "R"}]}))
    with pytest.raises(RoleAssignmentsInvalid, match="assignment 0 lacks"):
        load_role_assignments(path)
    path.write_text("[]")
    with pytest.raises(RoleAssignmentsInvalid, match="is not"):
        load_role_assignments(path)
    with pytest.raises(RoleAssignmentsInvalid, match="no role assignments at"):
        load_role_assignments(tmp_path / "missing.json")
