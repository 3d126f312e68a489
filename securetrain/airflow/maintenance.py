"""The maintenance DAGs' steps: retention and access review, and the containers a KEK rotation covers.

Each function takes its clients (a :class:`BlobStore`) and returns a JSON-able summary for XCom, so the DAG
files stay thin and the steps run the same outside Airflow. Every step records what it did in the audit log
of its DAG run (``securetrain.airflow.audit.record_events``). KEK rotation's steps are in :mod:`securetrain.core.rotation`
(the CLI runs them too): the rewrap itself runs in the TEE.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
from collections.abc import Mapping
from typing import Any

from securetrain.airflow.audit import audit_signing_key, record_events
from securetrain.airflow.environment import approved_release_policy
from securetrain.airflow.hooks.attestation import AttestationHook
from securetrain.airflow.settings import PipelineSettings
from securetrain.airflow.locations import CHECKPOINTS_CONTAINER, DATASETS_CONTAINER, MODELS_CONTAINER, REPORTS_CONTAINER
from securetrain.core.access_review import (
    AccessReview,
    AuditLogSummary,
    load_role_assignments,
    render_markdown,
    review_access,
    summarize_audit_log,
)
from securetrain.core.audit.chain import AuditEntry
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource
from securetrain.core.audit.sources import read_decision_log
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.audit.trail import verify_trail
from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.model_provenance import published_keys, verify_attestation_token
from securetrain.core.model_registry import REGISTRY_CONTAINER
from securetrain.core.retention import RetentionPolicy, apply_retention, plan_retention
from securetrain.core.storage import BlobStore, ContainerNotFound

log = logging.getLogger(__name__)

#: The containers that hold sealed blobs, which a KEK rotation rewraps.
SEALED_CONTAINERS = (DATASETS_CONTAINER, CHECKPOINTS_CONTAINER, MODELS_CONTAINER, REGISTRY_CONTAINER)


# --- Retention --------------------------------------------------------------------------------------


def run_retention(store: BlobStore, policy_document: object, *, dry_run: bool, audit_run: str) -> dict[str, Any]:
    """Plan retention under the policy; delete unless ``dry_run``; record a ``retention`` audit event.

    Raises:
        RetentionPolicyInvalid, NewestModelProtected: before anything is deleted (the refusal is audited).
    """
    policy = RetentionPolicy.parse(policy_document)
    try:
        plan = plan_retention(store, policy)
    except ConfigurationError as exc:
        record_events(store, audit_run, [AuditEvent.now(EventKind.RETENTION, EventSource.PIPELINE, run_id=audit_run,
                      details={"dry_run": dry_run, "policy": policy.to_json(), "refused": str(exc)})])  # fmt: skip
        raise
    listed = plan.to_json()
    for item in plan.deletions:
        log.info("%s %s/%s (%.1f days old, %d bytes)", "would delete" if dry_run else "deleting",
                 item.container, item.blob, item.age_days, item.size)  # fmt: skip
    outcome: dict[str, Any] = {"dry_run": dry_run, "policy": listed["policy"], "kept": listed["kept"]}
    if dry_run:
        outcome["would_delete"] = listed["deletions"]
    else:
        outcome["deleted"] = [item.to_json() for item in apply_retention(store, plan)]
    record_events(store, audit_run, [AuditEvent.now(EventKind.RETENTION, EventSource.PIPELINE, run_id=audit_run,
                                                    details=outcome)])  # fmt: skip
    return outcome


# --- Access review ----------------------------------------------------------------------------------


def audit_log_summaries(store: BlobStore, *, since: datetime.datetime, until: datetime.datetime) -> list[AuditLogSummary]:
    """Every audit log in the audit container, verified as a whole trail (the chain under the audit key, and
    the TEE's signed logs in it against the approved release policy), its events in the period.

    The TEE's own logs (``model-exports``: appended by the TEE, which holds no audit key) verify by the
    TEE's signatures alone; any other entry must be under a signed checkpoint.
    """
    public_key = audit_signing_key().public_key()
    policy = approved_release_policy(None)
    keys_for = published_keys(AttestationHook().connection.tls_verify)

    def check_token(raw: str) -> Mapping[str, Any]:
        return verify_attestation_token(raw, policy, keys_for)

    try:
        names = sorted(info.name.removeprefix("audit/").removesuffix(".jsonl") for info in store.list_blobs(AUDIT_CONTAINER, "audit/")
                       if info.name.endswith(".jsonl") and not info.name.endswith(".checkpoints.jsonl"))  # fmt: skip
    except ContainerNotFound:
        return []
    container = store.container_client(AUDIT_CONTAINER)
    summaries = []
    for name in names:
        audit_store = BlobAuditStore(container, name)
        lines = audit_store.read_all().lines
        try:
            verify_trail(lines, audit_store.read_checkpoints(), public_key, check_token=check_token)
        except SecurityViolation as exc:
            summaries.append(AuditLogSummary(name, False, str(exc), {}))
            continue
        events = (AuditEntry.parse(line, position).event for position, line in enumerate(lines))
        summaries.append(summarize_audit_log(name, events, since=since, until=until))
    return summaries


def write_access_review(store: BlobStore, *, since: datetime.datetime, until: datetime.datetime, report_prefix: str) -> dict[str, Any]:
    """Review access in ``[since, until]``; write ``reports/<prefix>.json`` and ``.md``; the JSON's blob names and findings."""
    settings = PipelineSettings.load()
    review: AccessReview = review_access(
        load_role_assignments(settings.required("keyvault_roles")),
        read_decision_log(settings.required("keyvault_access_log")),
        audit_log_summaries(store, since=since, until=until),
        since=since,
        until=until,
    )
    report = review.to_json()
    store.ensure_container(REPORTS_CONTAINER)
    for suffix, body in ((".json", json.dumps(report, indent=2, sort_keys=True).encode()), (".md", render_markdown(review).encode())):
        store.upload_stream(REPORTS_CONTAINER, report_prefix + suffix, io.BytesIO(body), length=len(body), overwrite=True)
    log.info("access review of %d identities, %d audit logs: %d finding(s); reports/%s.json and .md",
             len(review.identities), len(review.audit_logs), len(report["findings"]), report_prefix)  # fmt: skip
    return {"json": f"{REPORTS_CONTAINER}/{report_prefix}.json", "markdown": f"{REPORTS_CONTAINER}/{report_prefix}.md",
            "identities": len(review.identities), "findings": report["findings"]}  # fmt: skip
