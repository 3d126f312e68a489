"""Retention: which blobs are past their container's maximum age, and deleting them (crypto-shredding).

Which containers a policy may name, why the newest version of every registered model is never deleted, the
order of deletion, and what crypto-shredding does and does not cover are in docs/maintenance.md
("retention"). Planning (:func:`plan_retention`, :func:`select_deletions`) never deletes;
:func:`apply_retention` deletes a plan's blobs one at a time, and running it again finishes the job.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from securetrain.core.audit.store import AUDIT_CONTAINER
from securetrain.core.errors import ConfigurationError
from securetrain.core.model_registry import REGISTRY_CONTAINER
from securetrain.core.storage import BlobInfo, BlobNotFound, BlobStore, ContainerNotFound

log = logging.getLogger(__name__)

#: Containers a retention policy may name (``securetrain.airflow.locations`` names the same containers).
RETAINABLE_CONTAINERS = ("checkpoints", "models", REGISTRY_CONTAINER)
#: Containers retention never touches, and why.
KEPT_CONTAINERS = {
    AUDIT_CONTAINER: "audit logs are kept: they are the evidence of what happened",
    "reports": "reports are kept: they are the audit evidence people read",
    "datasets": "sealed datasets are the data owner's: they are withdrawn by the data owner, not by age",
}
_MANIFEST = re.compile(r"(?P<name>[a-z0-9-]+)/v(?P<version>[0-9]+)/manifest\.json")


class RetentionPolicyInvalid(ConfigurationError):
    """The retention policy is malformed or names a container retention may not touch."""


class NewestModelProtected(ConfigurationError):
    """The policy would delete the newest version of a registered model; nothing was deleted."""


@dataclass(frozen=True)
class RetentionPolicy:
    """Maximum age, in days, of the blobs in each named container (containers not named are untouched)."""

    max_age_days: Mapping[str, float]

    @classmethod
    def parse(cls, document: object) -> RetentionPolicy:
        """``{"<container>": {"max_age_days": N}, ...}`` (a dict or its JSON text), N a number >= 0.

        Raises:
            RetentionPolicyInvalid: naming the container or field that is wrong.
        """
        if isinstance(document, (str, bytes)):
            try:
                document = json.loads(document)
            except ValueError as exc:
                raise RetentionPolicyInvalid(f"the retention policy is not JSON: {exc}") from None
        if not isinstance(document, dict) or not document:
            raise RetentionPolicyInvalid(
                'the retention policy is an object naming at least one container, e.g. {"checkpoints": {"max_age_days": 7}}'
            )
        ages: dict[str, float] = {}
        for container, rule in document.items():
            if container in KEPT_CONTAINERS:
                raise RetentionPolicyInvalid(f"the retention policy names {container!r}: {KEPT_CONTAINERS[container]}")
            if container not in RETAINABLE_CONTAINERS:
                raise RetentionPolicyInvalid(
                    f"the retention policy names {container!r}; it may name only {', '.join(RETAINABLE_CONTAINERS)}"
                )
            if not isinstance(rule, dict) or set(rule) != {"max_age_days"}:
                raise RetentionPolicyInvalid(f"the rule for {container!r} must be exactly {{\"max_age_days\": N}}, got {rule!r}")
            age = rule["max_age_days"]
            if isinstance(age, bool) or not isinstance(age, (int, float)) or not math.isfinite(age) or age < 0:
                raise RetentionPolicyInvalid(f"max_age_days of {container!r} must be a number >= 0, got {age!r}")
            ages[container] = float(age)
        return cls(ages)

    def to_json(self) -> dict[str, Any]:
        return {container: {"max_age_days": age} for container, age in sorted(self.max_age_days.items())}


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version as retention sees it: its manifest blob and the sealed model it names."""

    name: str
    version: int
    manifest_blob: str
    model_blob: str

    @property
    def directory(self) -> str:
        """The prefix of the version's own blobs (its manifest, and whatever else is filed with it)."""
        return f"{self.name}/v{self.version}/"


@dataclass(frozen=True)
class Expired:
    """A blob past its container's maximum age."""

    container: str
    blob: str
    size: int
    age_days: float

    def to_json(self) -> dict[str, Any]:
        return {"container": self.container, "blob": self.blob, "size": self.size, "age_days": round(self.age_days, 3)}


@dataclass
class RetentionPlan:
    """What retention deletes (in order), and the expired blobs it keeps and why."""

    policy: RetentionPolicy
    now: datetime.datetime
    deletions: list[Expired] = field(default_factory=list)
    kept: list[tuple[Expired, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_json(),
            "now": self.now.isoformat(),
            "deletions": [item.to_json() for item in self.deletions],
            "kept": [{**item.to_json(), "reason": reason} for item, reason in self.kept],
        }


def select_deletions(
    policy: RetentionPolicy,
    blobs: Iterable[BlobInfo],
    registered: Iterable[RegisteredVersion],
    *,
    now: datetime.datetime,
) -> RetentionPlan:
    """Plan retention over ``blobs`` (the listings of the policy's containers) and the registry's versions.

    Raises:
        NewestModelProtected: the policy would delete a newest version's manifest or sealed model; it
            names every such version, and nothing is planned.
    """
    plan = RetentionPlan(policy, now)
    expired = []
    for info in blobs:
        limit = policy.max_age_days.get(info.container)
        if limit is None:
            continue
        age_days = (now - info.last_modified).total_seconds() / 86400
        if age_days > limit:
            expired.append(Expired(info.container, info.name, info.size, age_days))
    registered = list(registered)
    expired_registry = {item.blob for item in expired if item.container == REGISTRY_CONTAINER}
    newest: dict[str, RegisteredVersion] = {}
    for version in registered:
        if version.name not in newest or version.version > newest[version.name].version:
            newest[version.name] = version
    violations = [
        f"{version.name} version {version.version} ({blob})"
        for version in newest.values()
        for blob in sorted(expired_registry)
        if blob == version.model_blob or blob.startswith(version.directory)
    ]
    if violations:
        raise NewestModelProtected(
            "the retention policy would delete the newest version of a registered model: "
            + "; ".join(violations)
            + f". Nothing was deleted; raise max_age_days of {REGISTRY_CONTAINER!r} (newest versions are always kept)"
        )
    kept_versions = [version for version in registered if version.manifest_blob not in expired_registry]
    manifests, others = [], []
    for item in expired:
        keeper = item.container == REGISTRY_CONTAINER and next(
            (v for v in kept_versions if item.blob == v.model_blob or item.blob.startswith(v.directory)), None
        )
        if keeper:
            what = "the sealed model" if item.blob == keeper.model_blob else "a file"
            plan.kept.append((item, f"{what} of {keeper.name} version {keeper.version}, which is kept"))
        elif item.container == REGISTRY_CONTAINER and _MANIFEST.fullmatch(item.blob):
            manifests.append(item)
        else:
            others.append(item)
    # Manifests first: a crash between a manifest and its model leaves an unnamed model, never a version
    # whose model is gone.
    plan.deletions = manifests + others
    return plan


def registered_versions(store: BlobStore, container: str = REGISTRY_CONTAINER) -> list[RegisteredVersion]:
    """Every version in the registry with the sealed model its manifest names."""
    versions = []
    try:
        listing = [info.name for info in store.list_blobs(container)]
    except ContainerNotFound:
        return []
    for blob in listing:
        match = _MANIFEST.fullmatch(blob)
        if not match:
            continue
        try:
            manifest = json.loads(b"".join(store.download_chunks(container, blob)))
            model_blob = str(manifest["sealed_model"]["blob"])
        except (ValueError, KeyError, TypeError) as exc:
            # A version retention cannot read might be the newest: refuse rather than guess.
            raise NewestModelProtected(
                f"{container}/{blob} does not name its sealed model ({exc!r}); retention cannot tell what it would "
                "delete, so it deletes nothing: repair or remove that manifest first"
            ) from None
        versions.append(RegisteredVersion(match["name"], int(match["version"]), blob, model_blob))
    return versions


def plan_retention(store: BlobStore, policy: RetentionPolicy, *, now: datetime.datetime | None = None) -> RetentionPlan:
    """What ``policy`` deletes in ``store`` now; deletes nothing (a dry run is this plan)."""
    now = now or datetime.datetime.now(datetime.UTC)
    blobs: list[BlobInfo] = []
    for container in sorted(policy.max_age_days):
        try:
            blobs += store.list_blobs(container)
        except ContainerNotFound:
            log.info("container %s does not exist: nothing to retain there", container)
    registered = registered_versions(store) if REGISTRY_CONTAINER in policy.max_age_days else []
    plan = select_deletions(policy, blobs, registered, now=now)
    log.info("retention plan: %d blob(s) past their maximum age, %d kept as still referenced",
             len(plan.deletions), len(plan.kept))  # fmt: skip
    return plan


def apply_retention(store: BlobStore, plan: RetentionPlan) -> list[Expired]:
    """Delete the plan's blobs (with snapshots) in order; return those deleted now.

    A blob already gone (deleted by an interrupted earlier run) is skipped, so running a plan again is safe.
    """
    deleted = []
    for item in plan.deletions:
        try:
            store.delete(item.container, item.blob)
        except BlobNotFound:
            log.info("%s/%s is already gone", item.container, item.blob)
            continue
        deleted.append(item)
    log.info("retention deleted %d blob(s) (crypto-shredded where sealed)", len(deleted))
    return deleted
