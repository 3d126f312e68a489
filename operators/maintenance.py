"""The maintenance DAGs' steps: KEK rotation over the pipeline's containers, retention, access review.

Each function takes its clients (a :class:`BlobStore`, Key Vault factories) and returns a JSON-able
summary for XCom, so the DAG files stay thin and the steps run the same outside Airflow. Every step
records what it did in the audit log of its DAG run (``operators.audit.record_events``).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyVaultKeyIdentifier
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from azure.storage.blob import BlobClient

from operators.audit import audit_signing_key_path, record_events
from operators.locations import CHECKPOINTS_CONTAINER, DATASETS_CONTAINER, MODELS_CONTAINER, REPORTS_CONTAINER
from securetrain.access_review import (
    AccessReview,
    AuditLogSummary,
    load_role_assignments,
    render_markdown,
    review_access,
    summarize_audit_log,
)
from securetrain.audit.checkpoints import load_or_create_signing_key
from securetrain.audit.errors import AuditChainBroken
from securetrain.audit.events import AuditEvent, EventKind, EventSource
from securetrain.audit.log import AuditLog
from securetrain.audit.sources import read_decision_log
from securetrain.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.keyvault import rewrap_blobs
from securetrain.model_registry import REGISTRY_CONTAINER
from securetrain.retention import RetentionPolicy, apply_retention, plan_retention
from securetrain.sealed import KekPublicKey, SealedHeader
from securetrain.sealed.errors import SealedFileError
from securetrain.sealed.header import MAGIC, read_header
from securetrain.storage import BlobStore, ContainerNotFound

log = logging.getLogger(__name__)

#: The containers that hold sealed blobs, which a KEK rotation rewraps.
SEALED_CONTAINERS = (DATASETS_CONTAINER, CHECKPOINTS_CONTAINER, MODELS_CONTAINER, REGISTRY_CONTAINER)
#: How many blobs the vault unwraps again after a rotation, under the new version, to prove it opens them.
DEFAULT_VERIFY_SAMPLE = 5
_HEADER_READ_BYTES = 1024 * 1024

UnwrapClients = Callable[[str], CryptographyClient]


class RotationIncomplete(SecuretrainError):
    """Some blobs changed while they were rewrapped; they were left as they were. Transient: run again."""


class RotationNotVerified(SecurityViolation):
    """After the rotation, a sealed blob does not name the new KEK version or does not open under it."""


# --- KEK rotation -----------------------------------------------------------------------------------


def _sealed_blobs(store: BlobStore, containers: tuple[str, ...]) -> Iterator[tuple[str, BlobClient]]:
    """Every blob of ``containers`` that starts with the sealed format's magic (manifests and reports do not)."""
    for container in containers:
        client = store.container_client(container)
        try:
            # Sizes first: a ranged read of an empty blob is an error, and an empty blob is not sealed.
            names = [info.name for info in store.list_blobs(container) if info.size >= len(MAGIC)]
        except ContainerNotFound:
            continue
        for name in names:
            blob = client.get_blob_client(name)
            if blob.download_blob(offset=0, length=len(MAGIC)).readall() == MAGIC:
                yield container, blob


def _same_key(kek_id: str, kek: KekPublicKey) -> bool:
    ref, new = KeyVaultKeyIdentifier(kek_id), KeyVaultKeyIdentifier(kek.kek_id)
    return (ref.vault_url.rstrip("/"), ref.name) == (new.vault_url.rstrip("/"), new.name)


def rewrap_containers(
    store: BlobStore, new_kek: KekPublicKey, unwrap: UnwrapClients, containers: tuple[str, ...] = SEALED_CONTAINERS
) -> dict[str, Any]:
    """Rewrap the data key of every sealed blob of ``containers`` that an older version of ``new_kek``'s key
    wraps (:func:`securetrain.keyvault.rewrap_blob`: one atomic, ETag-conditional replacement per blob).

    Resumable: blobs already on ``new_kek`` are skipped, and a crash leaves each blob old or new, both
    readable. Raises :class:`RotationIncomplete` (after trying every blob) if some changed meanwhile.
    """
    named = ((f"{container}/{blob.blob_name}", blob) for container, blob in _sealed_blobs(store, containers))
    report = rewrap_blobs(named, new_kek, unwrap)
    changed = report.changed_meanwhile
    summary = dataclasses.asdict(report)
    log.info("rotation to %s: %d rewrapped, %d already current, %d of other keys", new_kek.kek_id,
             len(report.rewrapped), len(report.already_current), len(report.not_this_kek))  # fmt: skip
    if changed:
        raise RotationIncomplete(
            f"{len(changed)} blob(s) changed while they were rewrapped and were left as they were: {', '.join(changed)}; "
            "the task's retry (or another run with resume) rewraps them"
        )
    return summary


def _header(blob: BlobClient) -> SealedHeader:
    size = blob.get_blob_properties().size
    head = blob.download_blob(offset=0, length=min(size, _HEADER_READ_BYTES)).readall()
    try:
        header = read_header(io.BytesIO(head))
    except SealedFileError as exc:
        raise RotationNotVerified(f"{blob.container_name}/{blob.blob_name} starts like a sealed file but: {exc}") from None
    if header.sealed_length != size:
        raise RotationNotVerified(
            f"{blob.container_name}/{blob.blob_name} is {size} bytes; its header says {header.sealed_length}"
        )
    return header


def verify_rotation(
    store: BlobStore,
    new_kek: KekPublicKey,
    unwrap: UnwrapClients,
    *,
    sample_size: int = DEFAULT_VERIFY_SAMPLE,
    containers: tuple[str, ...] = SEALED_CONTAINERS,
) -> dict[str, Any]:
    """Check every sealed blob of the key: its header parses, names ``new_kek``'s version and thumbprint, and
    its length is the header's. Then, for a random sample, have the vault unwrap the data key under the new
    version and check it against the header's tag: the rewrapped key opens, and Airflow never holds the
    KEK's private half (the vault does the unwrap; the TEE, given that version, does the same).

    Raises:
        RotationNotVerified: naming every blob that failed.
    """
    problems, checked = [], []
    for container, blob in _sealed_blobs(store, containers):
        name = f"{container}/{blob.blob_name}"
        header = _header(blob)
        if not _same_key(header.key.kek_id, new_kek):
            continue
        if header.key.kek_id != new_kek.kek_id:
            problems.append(f"{name} is still wrapped for {header.key.kek_id} (written during the rotation by a run "
                            "that started before it? run key_rotation with resume: true)")  # fmt: skip
        elif header.key.kek_thumbprint != new_kek.thumbprint:
            problems.append(f"{name} names {new_kek.kek_id} but another public key (thumbprint {header.key.kek_thumbprint})")
        else:
            checked.append((name, header))
    sample = random.SystemRandom().sample(checked, min(sample_size, len(checked)))
    with unwrap(new_kek.kek_id) as crypto:
        for name, header in sample:
            try:
                dek = crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, header.key.wrapped_dek).key
                header.check_tag(dek)
            except (HttpResponseError, SealedFileError) as exc:
                problems.append(f"{name} does not open under {new_kek.kek_id}: {exc}")
    if problems:
        raise RotationNotVerified("after the rotation: " + "; ".join(problems))
    log.info("verified %d sealed blob(s) on %s; %d opened by the vault as a sample", len(checked), new_kek.kek_id, len(sample))
    return {"kek_id": new_kek.kek_id, "verified": len(checked), "sample_opened": sorted(name for name, _ in sample)}


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


def roles_file() -> Path:
    """The vault's role assignments: ``$SECURETRAIN_KEYVAULT_ROLES``, or the local stack's file."""
    if explicit := os.environ.get("SECURETRAIN_KEYVAULT_ROLES"):
        return Path(explicit)
    state_dir = os.environ.get("SECURETRAIN_STATE_DIR")
    if not state_dir:
        raise ConfigurationError("no role assignments: set SECURETRAIN_KEYVAULT_ROLES (or SECURETRAIN_STATE_DIR)")
    from securetrain.stack.keyvault import roles_path  # noqa: PLC0415 - the stack's modules only locally
    from securetrain.stack.layout import StackLayout  # noqa: PLC0415

    return roles_path(StackLayout(Path(state_dir)))


def access_log_file() -> Path:
    path = os.environ.get("SECURETRAIN_KEYVAULT_ACCESS_LOG")
    if not path:
        raise ConfigurationError("no Key Vault access log: set SECURETRAIN_KEYVAULT_ACCESS_LOG")
    return Path(path)


def audit_log_summaries(store: BlobStore, *, since: datetime.datetime, until: datetime.datetime) -> list[AuditLogSummary]:
    """Every audit log in the audit container, verified with the audit key, its events in the period."""
    public_key = load_or_create_signing_key(audit_signing_key_path()).public_key()
    try:
        names = sorted(info.name.removeprefix("audit/").removesuffix(".jsonl") for info in store.list_blobs(AUDIT_CONTAINER, "audit/")
                       if info.name.endswith(".jsonl") and not info.name.endswith(".checkpoints.jsonl"))  # fmt: skip
    except ContainerNotFound:
        return []
    container = store.container_client(AUDIT_CONTAINER)
    summaries = []
    for name in names:
        audit_log = AuditLog(BlobAuditStore(container, name))
        try:
            audit_log.verify(public_key)
        except AuditChainBroken as exc:
            summaries.append(AuditLogSummary(name, False, str(exc), {}))
            continue
        summaries.append(summarize_audit_log(name, (entry.event for entry in audit_log.entries()), since=since, until=until))
    return summaries


def write_access_review(store: BlobStore, *, since: datetime.datetime, until: datetime.datetime, report_prefix: str) -> dict[str, Any]:
    """Review access in ``[since, until]``; write ``reports/<prefix>.json`` and ``.md``; the JSON's blob names and findings."""
    review: AccessReview = review_access(
        load_role_assignments(roles_file()),
        read_decision_log(access_log_file()),
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
