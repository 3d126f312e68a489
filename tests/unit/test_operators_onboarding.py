"""The data owner's onboarding task (securetrain/airflow/onboarding.py) against the local stack: a dataset is
validated, sealed for the KEK the run names, uploaded and published with a manifest signed with the key of the
owner connection the run names, and the pipeline's data check accepts what was published. Data that fails its
suite fails the task without retry, and an owner connection without a signing key is refused."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from airflow.sdk.exceptions import AirflowFailException

from securetrain.airflow.data_security import DataSecurityCheckOperator
from securetrain.airflow.locations import DATASETS_CONTAINER
from securetrain.airflow.onboarding import DATA_OWNER_CONN_ID, publish_sealed_dataset
from securetrain.airflow.pipeline import DEFAULT_SUITE
from securetrain.core import signed_documents
from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.datasets import to_parquet
from securetrain.core.errors import ConfigurationError
from securetrain.core.keyvault import KEK_NAME
from securetrain.core.onboarding import DatasetManifest
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.storage import BlobStore
from securetrain.localstack import StackLayout, data_owner
from tests.stages import new_run_id, task_context

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.stage_fixtures"]


@pytest.fixture
def data_owner_connection(local_stack, airflow_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data owner's connection (its signing key): only the owner's own runs have it."""
    for name, value in data_owner.airflow_connection(StackLayout(local_stack.state_dir)).items():
        monkeypatch.setenv(name, value)


def _manifest(local_stack, summary: dict) -> dict:
    with BlobStore.from_settings(local_stack.settings()) as store:
        body = io.BytesIO()
        store.download_to(DATASETS_CONTAINER, summary["manifest_blob"].split("/", 1)[1], body)
    return json.loads(body.getvalue())


def test_a_validated_dataset_is_sealed_published_and_passes_the_pipeline_s_check(local_stack, data_owner_connection) -> None:
    dataset_id = f"onboarded-{uuid.uuid4().hex[:8]}"
    summary = publish_sealed_dataset("breast-cancer", dataset_id=dataset_id, version="v1", label="label", features=None,
                                     suite=DEFAULT_SUITE, kek_name=KEK_NAME)  # fmt: skip
    assert summary["manifest_blob"] == f"{DATASETS_CONTAINER}/{DatasetManifest.blob_name(dataset_id, 'v1')}"
    assert summary["validation"]["success"] is True and summary["shards"] == 1 and summary["rows"] == 569
    manifest = _manifest(local_stack, summary)
    assert manifest["signatures"] and manifest["columns"]["label"] == "label"
    policy = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
    checked = DataSecurityCheckOperator(
        task_id="check_data_security", dataset_id=dataset_id, version="latest", kek_id=summary["kek_id"],
        release_policy_sha256=policy.sha256,
    ).execute(task_context(new_run_id()))  # fmt: skip
    assert checked["version"] == "v1" and checked["datasets"][0]["plaintext_sha256"] == manifest["shards"][0]["plaintext_sha256"]


def test_another_owner_publishes_with_their_own_connection(local_stack, airflow_env, tmp_path, monkeypatch) -> None:
    """A second owner's run names the connection holding their key: the manifest carries their signature."""
    key_file = tmp_path / "owner-two.pem"
    owner_two = load_or_create_signing_key(key_file)
    monkeypatch.setenv("AIRFLOW_CONN_SECURETRAIN_OWNER_TWO",
                       json.dumps({"conn_type": "generic", "extra": {"signing_key": str(key_file)}}))  # fmt: skip
    source = tmp_path / "cohort.parquet"
    source.write_bytes(to_parquet(pa.table({"age": [30, 41, 52, 63], "smoker": [0, 1, 0, 1], "outcome": [0, 0, 1, 1]})))
    suite = {"name": "cohort", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "outcome"}}]}  # fmt: skip
    summary = publish_sealed_dataset(str(source), dataset_id=f"cohort-{uuid.uuid4().hex[:8]}", version="2026-06",
                                     label="outcome", features=["age"], suite=suite, kek_name=KEK_NAME, shard_rows=3,
                                     data_owner_conn_id="securetrain_owner_two")  # fmt: skip
    manifest = _manifest(local_stack, summary)
    signed_documents.verify(manifest, owner_two.public_key(), what="the manifest", signer="the second owner's key")
    assert manifest["columns"] == {"label": "outcome", "features": ["age"]} and summary["shards"] == 2


def test_data_that_fails_its_suite_fails_the_task_without_retry(local_stack, data_owner_connection) -> None:
    suite = {"name": "impossible", "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [7]}}]}  # fmt: skip
    dataset_id = f"invalid-{uuid.uuid4().hex[:8]}"
    with pytest.raises(AirflowFailException, match=f"{dataset_id} v1 was not published"):
        publish_sealed_dataset("breast-cancer", dataset_id=dataset_id, version="v1", label="label", features=None,
                               suite=suite, kek_name=KEK_NAME)  # fmt: skip
    with BlobStore.from_settings(local_stack.settings()) as store:
        assert list(store.list_blobs(DATASETS_CONTAINER, f"{dataset_id}/")) == []


def test_an_owner_connection_without_a_signing_key_is_refused(airflow_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{DATA_OWNER_CONN_ID.upper()}", json.dumps({"conn_type": "generic"}))
    with pytest.raises(ConfigurationError, match=f"the connection {DATA_OWNER_CONN_ID} names no signing_key"):
        publish_sealed_dataset("breast-cancer", dataset_id=f"keyless-{uuid.uuid4().hex[:8]}", version="v1",
                               label="label", features=None, suite=None, kek_name=KEK_NAME)  # fmt: skip
