"""The data owner's stages (securetrain/airflow/onboarding.py): plaintext validated with Great Expectations, then
sealed for the KEK's public key, uploaded and published with a manifest the owner signs, against the local
stack; the pipeline's data check accepts what was published. A source that changed since it was validated,
and an owner connection without a signing key, are refused."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import pytest

from securetrain.airflow.data_security import DataSecurityCheckOperator
from securetrain.airflow.locations import DATASETS_CONTAINER
from securetrain.airflow.onboarding import DATA_OWNER_CONN_ID, load_plaintext, publish_sealed_dataset, validate_plaintext
from securetrain.airflow.pipeline import DEFAULT_SUITE
from securetrain.core.datasets import bundled_table, to_parquet
from securetrain.core.errors import ConfigurationError
from securetrain.core.contracts.training import DataValidationFailed
from securetrain.core.onboarding import DatasetManifest
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.storage import BlobStore
from securetrain.localstack import StackLayout, data_owner
from tests.stages import new_run_id, task_context

pytest_plugins = ["tests.stage_fixtures"]


def test_the_plaintext_is_validated_and_its_digest_returned() -> None:
    result = validate_plaintext("breast-cancer", DEFAULT_SUITE)
    assert result["plaintext_sha256"] == hashlib.sha256(load_plaintext("breast-cancer")).hexdigest()
    assert result["validation"]["success"] is True
    json.dumps(result)  # an XCom value: digests and aggregates, no plaintext


def test_a_parquet_file_is_a_source_too(tmp_path: Path) -> None:
    source = tmp_path / "data.parquet"
    source.write_bytes(to_parquet(bundled_table("breast-cancer")))
    assert validate_plaintext(str(source), DEFAULT_SUITE)["plaintext_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_data_that_fails_its_suite_is_not_published() -> None:
    suite = {"name": "impossible", "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [7]}}]}  # fmt: skip
    with pytest.raises(DataValidationFailed):
        validate_plaintext("breast-cancer", suite)


def test_an_unknown_source_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="is neither a bundled dataset"):
        load_plaintext("no-such-dataset")


@pytest.fixture
def data_owner_connection(local_stack, airflow_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data owner's connection (its signing key): only the owner's own runs have it."""
    for name, value in data_owner.airflow_connection(StackLayout(local_stack.state_dir)).items():
        monkeypatch.setenv(name, value)


@pytest.mark.integration
def test_a_validated_dataset_is_sealed_published_and_passes_the_pipeline_s_check(local_stack, data_owner_connection) -> None:
    dataset_id = f"onboarded-{uuid.uuid4().hex[:8]}"
    validated = validate_plaintext("breast-cancer", DEFAULT_SUITE)
    summary = publish_sealed_dataset(dataset_id, "v1", "breast-cancer", validated["plaintext_sha256"])
    assert summary == {"dataset_id": dataset_id, "version": "v1", "kek_id": summary["kek_id"],
                       "manifest_blob": f"{DATASETS_CONTAINER}/{DatasetManifest.blob_name(dataset_id, 'v1')}",
                       "shards": 1, "sealed_bytes": summary["sealed_bytes"]}  # fmt: skip
    with BlobStore.from_settings(local_stack.settings()) as store:
        body = io.BytesIO()
        store.download_to(DATASETS_CONTAINER, DatasetManifest.blob_name(dataset_id, "v1"), body)
    manifest = json.loads(body.getvalue())
    assert manifest["shards"][0]["plaintext_sha256"] == validated["plaintext_sha256"] and manifest["signatures"]
    policy = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
    checked = DataSecurityCheckOperator(
        task_id="check_data_security", dataset_id=dataset_id, version="latest", kek_id=summary["kek_id"],
        release_policy_sha256=policy.sha256,
    ).execute(task_context(new_run_id()))  # fmt: skip
    assert checked["version"] == "v1" and checked["datasets"][0]["plaintext_sha256"] == validated["plaintext_sha256"]


@pytest.mark.integration
def test_a_source_that_changed_since_it_was_validated_is_refused(data_owner_connection) -> None:
    validated = validate_plaintext("breast-cancer", DEFAULT_SUITE)
    with pytest.raises(ConfigurationError, match="changed since it was validated"):
        publish_sealed_dataset(f"changed-{uuid.uuid4().hex[:8]}", "v1", "digits", validated["plaintext_sha256"])


@pytest.mark.integration
def test_an_owner_connection_without_a_signing_key_is_refused(airflow_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{DATA_OWNER_CONN_ID.upper()}", json.dumps({"conn_type": "generic"}))
    digest = hashlib.sha256(load_plaintext("breast-cancer")).hexdigest()
    with pytest.raises(ConfigurationError, match=f"the connection {DATA_OWNER_CONN_ID} names no signing_key"):
        publish_sealed_dataset(f"keyless-{uuid.uuid4().hex[:8]}", "v1", "breast-cancer", digest)
