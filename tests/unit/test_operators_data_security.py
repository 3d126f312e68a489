"""Stage 2, DataSecurityCheckOperator.execute() against the local stack: a sealed dataset verified without a
key, its newest version found, and storage that lies (a replaced shard, a manifest under another dataset's
name, a KEK whose release policy changed since the run began) refused."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import pytest

from securetrain.airflow.data_security import LATEST, DataSecurityCheckOperator
from securetrain.airflow.failures import SecurityCheckFailed
from securetrain.airflow.locations import DATASETS_CONTAINER
from securetrain.core.datasets import bundled_table, to_parquet
from securetrain.core.keyvault import fetch_kek_public_key
from securetrain.core.onboarding import DatasetManifest, DatasetRef, new_manifest, seal_and_upload
from securetrain.core.release_policy import ReleasePolicy
from securetrain.localstack import StackLayout, data_owner
from tests.stages import dataset_version, new_run_id, task_context

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.stage_fixtures"]


@pytest.fixture
def approved(local_stack) -> dict[str, str]:
    """What environment preparation returned for the run: the KEK and the approved policy's digest."""
    policy = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
    return {"kek_id": local_stack.env["SECURETRAIN_KEK_ID"], "release_policy_sha256": policy.sha256}


def _check(approved: dict[str, str], dataset_id: str, version: str, **overrides: str) -> dict:
    arguments = {"dataset_id": dataset_id, "version": version, **approved, **overrides}
    return DataSecurityCheckOperator(task_id="check_data_security", **arguments).execute(task_context(new_run_id()))


def _publish(local_stack, store, dataset_id: str, version: str, source: str = "breast-cancer") -> DatasetRef:
    """A dataset version sealed, uploaded and described by a manifest the stack's data owner signed."""
    kek = fetch_kek_public_key(local_stack.env["SECURETRAIN_KEK_ID"], local_stack.settings())
    shard = seal_and_upload(to_parquet(bundled_table(source)), kek=kek, store=store, container=DATASETS_CONTAINER,
                            blob=f"{dataset_id}/{version}/shard-00000.parquet.sealed", file_format="parquet",
                            context={"dataset_id": dataset_id, "version": version}, overwrite=True)  # fmt: skip
    owner_key = data_owner.signing_key(StackLayout(local_stack.state_dir))
    return new_manifest(dataset_id, version, kek.kek_id, [shard], owner_key).write(store, DATASETS_CONTAINER)


def test_a_sealed_dataset_is_verified_and_described_for_the_job(airflow_env, approved, shard, dataset_ref) -> None:
    dataset_id, version = dataset_version(dataset_ref)
    result = _check(approved, dataset_id, version)
    assert result == {
        "dataset_id": dataset_id,
        "version": version,
        "manifest_blob": f"{dataset_ref.container}/{dataset_ref.manifest}",
        "job_datasets": [dataset_ref.model_dump(mode="json")],
        "datasets": [{"container": shard.container, "blob": shard.blob, "format": "parquet",
                      "context": dict(shard.context), "kek_id": shard.kek_id,
                      "plaintext_sha256": shard.plaintext_sha256, "size": shard.sealed_bytes}],
    }  # fmt: skip
    json.dumps(result)  # an XCom value: JSON as it is


def test_latest_is_the_newest_version(local_stack, airflow_env, approved, store) -> None:
    dataset_id = f"latest-{uuid.uuid4().hex[:8]}"
    _publish(local_stack, store, dataset_id, "v1")
    time.sleep(1.1)  # the newest is the manifest written last, and blob times are whole seconds
    newest = _publish(local_stack, store, dataset_id, "v2")
    result = _check(approved, dataset_id, LATEST)
    assert result["version"] == "v2" and result["job_datasets"] == [newest.model_dump(mode="json")]


def test_a_shard_replaced_after_the_manifest_was_signed_is_refused(local_stack, airflow_env, approved, store) -> None:
    dataset_id = f"replaced-{uuid.uuid4().hex[:8]}"
    _publish(local_stack, store, dataset_id, "v1")
    kek = fetch_kek_public_key(local_stack.env["SECURETRAIN_KEK_ID"], local_stack.settings())
    # Other data sealed for the same KEK, under the shard's name and context: only the manifest tells them apart.
    seal_and_upload(to_parquet(bundled_table("digits")), kek=kek, store=store, container=DATASETS_CONTAINER,
                    blob=f"{dataset_id}/v1/shard-00000.parquet.sealed", file_format="parquet",
                    context={"dataset_id": dataset_id, "version": "v1"}, overwrite=True)  # fmt: skip
    with pytest.raises(SecurityCheckFailed, match="DatasetCheckFailed.*its plaintext digest differs from the manifest's"):
        _check(approved, dataset_id, "v1")


def test_a_manifest_copied_under_another_dataset_s_name_is_refused(local_stack, airflow_env, approved, store,
                                                                   dataset_ref) -> None:  # fmt: skip
    impostor = f"impostor-{uuid.uuid4().hex[:8]}"
    body = io.BytesIO()
    store.download_to(dataset_ref.container, dataset_ref.manifest, body)
    store.upload_stream(DATASETS_CONTAINER, DatasetManifest.blob_name(impostor, "v1"), io.BytesIO(body.getvalue()),
                        length=len(body.getvalue()))  # fmt: skip
    with pytest.raises(SecurityCheckFailed, match=f"describes breast-cancer .* not {impostor} for the approved KEK"):
        _check(approved, impostor, "v1")


def test_a_kek_released_under_another_policy_than_the_run_approved_is_refused(airflow_env, approved, dataset_ref) -> None:
    dataset_id, version = dataset_version(dataset_ref)
    with pytest.raises(SecurityCheckFailed, match="is now released under policy sha256 .* not the approved 00000000"):
        _check(approved, dataset_id, version, release_policy_sha256="0" * 64)
