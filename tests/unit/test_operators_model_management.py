"""Stage 4, ModelManagementOperator.execute() against the local stack: the run's sealed model registered as a
new version with its lineage and signed manifest; a training result that names another run's model, or
carries another run's provenance or none, refused without retry."""

from __future__ import annotations

import uuid

import pytest

from securetrain.airflow.failures import SecurityCheckFailed
from securetrain.airflow.model_management import ModelManagementOperator
from securetrain.airflow.settings import PipelineSettings
from securetrain.core.audit.checkpoints import load_signing_key
from securetrain.core.model_provenance import verify_manifest_signature
from securetrain.core.model_registry import REGISTRY_CONTAINER, ModelRegistry
from securetrain.core.storage import BlobStore
from tests.stages import HYPERPARAMETERS, Stages

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.stage_fixtures"]

#: A model name of this module's own: its versions count from 1.
MODEL_NAME = f"stage-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def trained(airflow_env, dataset_ref) -> Stages:
    """A run trained to its end: the results model management reads."""
    stages = Stages(dataset_ref)
    stages.through_training()
    return stages


def _register(stages: Stages, training: dict | None = None) -> dict:
    results = stages.results
    operator = ModelManagementOperator(
        task_id="register_model", model_name=MODEL_NAME, training=training or results["train"],
        data=results["check_data_security"], environment=results["prepare_environment"], hyperparameters=HYPERPARAMETERS,
    )  # fmt: skip
    return operator.execute(stages.context())


def test_the_run_s_model_is_registered_with_its_lineage_and_signed(local_stack, trained) -> None:
    result = _register(trained)
    assert set(result) == {"name", "version", "manifest_blob", "sealed_sha256"}
    assert result["name"] == MODEL_NAME and result["version"] == 1
    assert result["manifest_blob"] == f"{REGISTRY_CONTAINER}/{MODEL_NAME}/v1/manifest.json"
    with BlobStore.from_settings(local_stack.settings()) as store:
        version = ModelRegistry(store).get(MODEL_NAME, 1)
    manifest = version.manifest
    assert manifest["sealed_model"]["sha256"] == result["sealed_sha256"]
    lineage = manifest["lineage"]
    assert lineage["dag_run"] == {"dag_id": "secure_training", "run_id": trained.run_id}
    assert lineage["job_id"] == trained.results["train"]["job_id"]
    assert lineage["dataset"]["manifest"] == trained.results["check_data_security"]["manifest_blob"]
    assert lineage["release_policy_sha256"] == trained.results["prepare_environment"]["release_policy_sha256"]
    assert lineage["attestation"] == trained.results["train"]["attestation"]
    # The key the operator signed with ($SECURETRAIN_MODEL_SIGNING_KEY, as in Airflow's processes).
    verify_manifest_signature(manifest, load_signing_key(PipelineSettings.load().required("model_signing_key")).public_key())
    assert _register(trained)["version"] == 2  # the next registration is the next version


def test_a_training_result_naming_another_run_is_refused(trained) -> None:
    # The sealed model's header names the run that trained it; the result says another run did.
    training = {**trained.results["train"], "run_id": "secure_training.manual__someone-else.0123456789ab"}
    with pytest.raises(SecurityCheckFailed, match=r"model management: security check failed \(ModelRejected\)"):
        _register(trained, training)


def test_another_run_s_provenance_is_refused(trained) -> None:
    other = Stages(trained.dataset_ref)
    other.results = {task_id: trained.results[task_id] for task_id in ("prepare_environment", "check_data_security")}
    other.train()
    # This run's model with the TEE's statement about the other run's model.
    training = {**trained.results["train"], "provenance": other.results["train"]["provenance"]}
    with pytest.raises(SecurityCheckFailed, match="the TEE's statement names"):
        _register(trained, training)


def test_a_training_result_without_provenance_is_refused_without_retry(trained) -> None:
    training = {**trained.results["train"], "provenance": None}
    with pytest.raises(SecurityCheckFailed, match="carries no provenance"):
        _register(trained, training)
