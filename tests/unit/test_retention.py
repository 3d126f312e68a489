"""Retention planning: maximum ages, kept containers, the newest model version never deleted."""

from __future__ import annotations

import datetime

import pytest

from securetrain.core.retention import (
    NewestModelProtected,
    RegisteredVersion,
    RetentionPolicy,
    RetentionPolicyInvalid,
    select_deletions,
)
from securetrain.core.storage import BlobInfo

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


def blob(container: str, name: str, age_days: float) -> BlobInfo:
    return BlobInfo(container, name, 100, None, {}, '"etag"', NOW - datetime.timedelta(days=age_days))


def version(name: str, number: int, digest: str) -> RegisteredVersion:
    return RegisteredVersion(name, number, f"{name}/v{number}/manifest.json", f"{name}/sealed/{digest}.sealed")


def test_policy_parses_from_json_text_and_dict() -> None:
    assert RetentionPolicy.parse('{"checkpoints": {"max_age_days": 7}}').max_age_days == {"checkpoints": 7.0}
    assert RetentionPolicy.parse({"models": {"max_age_days": 0}}).max_age_days == {"models": 0.0}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"securetrain-audit": {"max_age_days": 1}}, "audit logs are kept"),
        ({"reports": {"max_age_days": 1}}, "reports are kept"),
        ({"datasets": {"max_age_days": 1}}, "data owner"),
        ({"scratch": {"max_age_days": 1}}, "may name only checkpoints, models, model-registry"),
        ({"checkpoints": {"max_age_days": -1}}, "must be a number >= 0"),
        ({"checkpoints": {"max_age_days": True}}, "must be a number >= 0"),
        ({"checkpoints": {"max_age_days": float("nan")}}, "must be a number >= 0"),
        ({"checkpoints": {"max_age_days": 1, "prefix": "x"}}, "must be exactly"),
        ({}, "at least one container"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_policies_are_refused_naming_what_is_wrong(document: object, message: str) -> None:
    with pytest.raises(RetentionPolicyInvalid, match=message):
        RetentionPolicy.parse(document)


def test_only_blobs_past_their_containers_age_are_deleted() -> None:
    policy = RetentionPolicy.parse({"checkpoints": {"max_age_days": 7}, "models": {"max_age_days": 1}})
    blobs = [blob("checkpoints", "run-a/epoch-1.sealed", 8), blob("checkpoints", "run-b/epoch-1.sealed", 6),
             blob("models", "run-a/model.sealed", 2), blob("datasets", "x/part-0.sealed", 400)]  # fmt: skip
    plan = select_deletions(policy, blobs, [], now=NOW)
    assert [(item.container, item.blob) for item in plan.deletions] == [
        ("checkpoints", "run-a/epoch-1.sealed"), ("models", "run-a/model.sealed")]  # fmt: skip
    assert plan.kept == []


def test_a_policy_that_would_delete_the_newest_model_version_is_refused_as_a_whole() -> None:
    policy = RetentionPolicy.parse({"model-registry": {"max_age_days": 30}, "checkpoints": {"max_age_days": 0}})
    registered = [version("clf", 1, "aa"), version("clf", 2, "bb")]
    blobs = [blob("checkpoints", "old.sealed", 1), blob("model-registry", "clf/v1/manifest.json", 60),
             blob("model-registry", "clf/sealed/aa.sealed", 60), blob("model-registry", "clf/v2/manifest.json", 40),
             blob("model-registry", "clf/sealed/bb.sealed", 40)]  # fmt: skip
    with pytest.raises(NewestModelProtected, match=r"clf version 2 \(clf/v2/manifest.json\).*Nothing was deleted"):
        select_deletions(policy, blobs, registered, now=NOW)


def test_the_newest_versions_sealed_model_alone_counts_too() -> None:
    policy = RetentionPolicy.parse({"model-registry": {"max_age_days": 30}})
    blobs = [blob("model-registry", "clf/v1/manifest.json", 5), blob("model-registry", "clf/sealed/aa.sealed", 60)]
    with pytest.raises(NewestModelProtected, match=r"clf version 1 \(clf/sealed/aa.sealed\)"):
        select_deletions(policy, blobs, [version("clf", 1, "aa")], now=NOW)


def test_old_versions_go_manifest_first_and_a_model_a_kept_version_names_stays() -> None:
    policy = RetentionPolicy.parse({"model-registry": {"max_age_days": 30}})
    # v1 and v2 registered the same sealed model (same digest); v3 is newest; v1 and v2 are old.
    registered = [version("clf", 1, "aa"), version("clf", 2, "aa"), version("clf", 3, "cc"), version("other", 1, "dd")]
    blobs = [blob("model-registry", "clf/sealed/aa.sealed", 90), blob("model-registry", "clf/v1/manifest.json", 90),
             blob("model-registry", "clf/v2/manifest.json", 10), blob("model-registry", "clf/v3/manifest.json", 5),
             blob("model-registry", "clf/sealed/cc.sealed", 5), blob("model-registry", "other/v1/manifest.json", 1),
             blob("model-registry", "other/sealed/dd.sealed", 1), blob("model-registry", "clf/sealed/orphan.sealed", 99)]  # fmt: skip
    plan = select_deletions(policy, blobs, registered, now=NOW)
    assert [item.blob for item in plan.deletions] == ["clf/v1/manifest.json", "clf/sealed/orphan.sealed"]
    assert [(item.blob, reason) for item, reason in plan.kept] == [
        ("clf/sealed/aa.sealed", "the sealed model of clf version 2, which is kept")]  # fmt: skip


def test_files_filed_under_a_version_follow_it() -> None:
    policy = RetentionPolicy.parse({"model-registry": {"max_age_days": 30}})
    registered = [version("clf", 1, "aa"), version("clf", 2, "bb"), version("clf", 3, "cc")]
    blobs = [blob("model-registry", "clf/v1/manifest.json", 90), blob("model-registry", "clf/v1/manifest.sig", 90),
             blob("model-registry", "clf/v2/manifest.sig", 90), blob("model-registry", "clf/v2/manifest.json", 10)]  # fmt: skip
    plan = select_deletions(policy, blobs, registered, now=NOW)
    assert [item.blob for item in plan.deletions] == ["clf/v1/manifest.json", "clf/v1/manifest.sig"]
    assert [reason for _, reason in plan.kept] == ["a file of clf version 2, which is kept"]
    with pytest.raises(NewestModelProtected, match=r"clf version 3 \(clf/v3/export.json\)"):
        select_deletions(policy, [blob("model-registry", "clf/v3/export.json", 60)], registered, now=NOW)


def test_zero_days_means_everything_older_than_now() -> None:
    policy = RetentionPolicy.parse({"checkpoints": {"max_age_days": 0}})
    plan = select_deletions(policy, [blob("checkpoints", "a", 0.0001), blob("checkpoints", "b", 0)], [], now=NOW)
    assert [item.blob for item in plan.deletions] == ["a"]
    assert plan.to_json()["deletions"][0]["container"] == "checkpoints"
