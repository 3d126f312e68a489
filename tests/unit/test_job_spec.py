"""The job spec contract and the training spec the agent hands to training."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from securetrain.core.contracts.job_spec import JobSpec, JobSpecError
from securetrain.core.contracts.training import DatasetShard, JobKeys, TrainingSpec


def valid_spec() -> dict[str, Any]:
    return {
        "run_id": "manual__2026-01-01T00:00:00+00:00",
        "nonce": "n0nce-0f-at-least-22-chars",
        "kek_id": "https://127.0.0.1:8443/keys/kek/0123456789abcdef",
        "datasets": [
            {"container": "datasets", "manifest": "bc/v1/manifest.json"},
            {"container": "datasets", "manifest": "bc/v2/manifest.json"},
        ],
        "columns": {"label": "target"},
        "model": {"name": "mlp", "params": {"hidden": [32, 16]}},
        "hyperparameters": {"epochs": 3, "batch_size": 64, "learning_rate": 0.001, "seed": 7},
        "expectation_suite": {
            "name": "bc", "id": None, "meta": {}, "notes": None,
            "expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "target"},
                              "meta": {}, "severity": "critical"}],
        },
        "checkpoints": {"container": "checkpoints", "prefix": "run-1/"},
        "output": {"container": "models", "blob": "run-1/model.sealed"},
    }  # fmt: skip


def rejected_field(document: Any) -> str:
    with pytest.raises(JobSpecError) as caught:
        JobSpec.from_json(document)
    return caught.value.field


def shards(*formats: str) -> list[DatasetShard]:
    """Shards as the TEE resolves them from owner-signed manifests."""
    return [shard("datasets", f"bc/part-{i}.sealed", fmt) for i, fmt in enumerate(formats)]


def shard(container: str, blob: str, fmt: str) -> DatasetShard:
    return DatasetShard(container=container, blob=blob, format=fmt, context={"kind": "dataset"})


def test_a_valid_spec_builds_the_training_spec_on_the_resolved_shards() -> None:
    spec = JobSpec.from_json(valid_spec())
    assert [ref.manifest for ref in spec.datasets] == ["bc/v1/manifest.json", "bc/v2/manifest.json"]
    training = TrainingSpec.for_job(spec, shards("parquet", "parquet"))
    assert training.run_id == spec.run_id
    assert [shard.blob for shard in training.datasets] == ["bc/part-0.sealed", "bc/part-1.sealed"]
    assert training.columns.label == "target" and training.columns.features is None
    assert training.model.name == "mlp" and training.model.params["hidden"] == (32, 16)
    assert training.hyperparameters.optimizer == "adam"
    assert training.expectation_suite is not None and training.expectation_suite.name == "bc"
    assert training.checkpoints.prefix == "run-1/"


def test_to_json_round_trips() -> None:
    spec = JobSpec.from_json(valid_spec())
    assert JobSpec.from_json(spec.to_json()) == spec


def test_the_spec_is_read_only_after_validation() -> None:
    spec = JobSpec.from_json(valid_spec())
    with pytest.raises(TypeError):
        spec.model.params["hidden"] = (1,)  # type: ignore[index]


def test_job_id_follows_the_run_id() -> None:
    first, second = JobSpec.from_json(valid_spec()), JobSpec.from_json(valid_spec())
    other = valid_spec() | {"run_id": "manual__other"}
    assert first.job_id == second.job_id != JobSpec.from_json(other).job_id


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ((), "surprise"),
        (("datasets", 0), "datasets[0].surprise"),
        (("columns",), "columns.surprise"),
        (("model",), "model.surprise"),
        (("hyperparameters",), "hyperparameters.surprise"),
        (("expectation_suite",), "expectation_suite.surprise"),
        (("expectation_suite", "expectations", 0), "expectation_suite.expectations[0].surprise"),
        (("checkpoints",), "checkpoints.surprise"),
        (("output",), "output.surprise"),
    ],
)
def test_unknown_fields_are_rejected_by_name(path: tuple[Any, ...], field: str) -> None:
    document = valid_spec()
    target = document
    for part in path:
        target = target[part]
    target["surprise"] = 1
    assert rejected_field(document) == field


@pytest.mark.parametrize(
    "missing", ["run_id", "nonce", "kek_id", "datasets", "columns", "model", "hyperparameters", "checkpoints", "output"]
)
def test_required_fields_are_named_when_missing(missing: str) -> None:
    document = valid_spec()
    del document[missing]
    assert rejected_field(document) == missing


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(nonce="short"), "nonce"),
        (lambda d: d.update(kek_id="https://vault/keys/kek"), "kek_id"),
        (lambda d: d.update(kek_id="http://vault/keys/kek/1"), "kek_id"),
        (lambda d: d.update(datasets=[]), "datasets"),
        (lambda d: d["datasets"][0].update(manifest="../escape"), "datasets[0].manifest"),
        (lambda d: d["datasets"][0].update(manifest="/absolute"), "datasets[0].manifest"),
        (lambda d: d["datasets"][0].update(container="Upper"), "datasets[0].container"),
        (lambda d: d["hyperparameters"].update(epochs=0), "hyperparameters.epochs"),
        (lambda d: d["hyperparameters"].update(learning_rate=0), "hyperparameters.learning_rate"),
        (lambda d: d["hyperparameters"].update(seed=-1), "hyperparameters.seed"),
        (lambda d: d["hyperparameters"].update(batch_size="64"), "hyperparameters.batch_size"),
        (lambda d: d["checkpoints"].update(prefix="no-slash"), "checkpoints.prefix"),
        (lambda d: d["model"].update(name="Not A Model"), "model.name"),
    ],
)
def test_bad_values_are_rejected_by_field(change: Any, field: str) -> None:
    document = valid_spec()
    change(document)
    assert rejected_field(document) == field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["datasets"].append(copy.deepcopy(d["datasets"][0])), "datasets"),
        (lambda d: d["columns"].update(features=["a", "target"]), "columns.features"),
        (lambda d: d.update(output={"container": "checkpoints", "blob": "run-1/model.sealed"}), "output.blob"),
        (lambda d: d.update(output={"container": "datasets", "blob": "bc/v1/manifest.json"}), "output.blob"),
    ],
)
def test_rules_across_fields(change: Any, field: str) -> None:
    document = valid_spec()
    change(document)
    assert rejected_field(document) == field


@pytest.mark.parametrize(
    ("resolved", "field"),
    [
        (shards("parquet", "safetensors"), "datasets"),
        ([], "datasets"),
        (shards("parquet") * 2, "datasets"),
        ([shard("models", "run-1/model.sealed", "parquet")], "output.blob"),
        ([shard("checkpoints", "run-1/epoch-1", "parquet")], "checkpoints.prefix"),
    ],
)
def test_rules_over_the_resolved_shards(resolved: list[DatasetShard], field: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        TrainingSpec.for_job(JobSpec.from_json(valid_spec()), resolved)
    assert caught.value.field == field


def test_a_document_that_is_not_an_object_is_rejected() -> None:
    assert rejected_field(["not", "an", "object"]) == "(the job spec)"


def test_every_object_in_the_schema_closes_its_fields() -> None:
    """additionalProperties false wherever the job spec's JSON schema names properties (free maps are documented)."""

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, where
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")

    walk(JobSpec.model_json_schema(), "schema")


def test_job_keys_never_print_key_material(kek_private) -> None:
    keys = JobKeys.from_released(kek_private, "https://vault.test/keys/kek/1")
    assert keys.kek_public.thumbprint == kek_private.thumbprint
    assert "PRIVATE" not in repr(keys) and "n=" not in repr(keys)
