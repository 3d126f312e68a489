"""Stage 1, EnvironmentPreparationOperator.execute() against the local stack: containers, the KEK under the
approved release policy, the attestation service's keys, the CVM up; and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow.sdk.exceptions import AirflowFailException
from securetrain.airflow.environment import EnvironmentPreparationOperator
from securetrain.airflow.failures import SecurityCheckFailed
from securetrain.airflow.locations import CONTAINERS
from securetrain.core.release_policy import ReleasePolicy
from securetrain.core.storage import BlobStore
from tests.stages import new_run_id, task_context

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.stage_fixtures"]


def test_it_prepares_the_environment_and_returns_what_the_later_stages_use(local_stack, airflow_env) -> None:
    result = EnvironmentPreparationOperator(task_id="prepare_environment").execute(task_context(new_run_id()))
    approved = ReleasePolicy.parse(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_bytes())
    assert result == {
        "kek_id": result["kek_id"],
        "release_policy_sha256": approved.sha256,
        "cvm_endpoint": local_stack.env["SECURETRAIN_CVM_ENDPOINT"],
        "tee": result["tee"],
        "containers": list(CONTAINERS),
    }
    assert result["kek_id"].startswith(local_stack.env["SECURETRAIN_KEYVAULT_URL"].rstrip("/") + "/keys/")
    assert result["tee"] == "sev-snp-simulated"
    json.dumps(result)  # an XCom value: JSON as it is
    with BlobStore.from_settings(local_stack.settings()) as store:
        for container in CONTAINERS:
            store.check_private(container)  # exists, and no public access


def test_a_release_policy_other_than_the_kek_s_fails_without_retry(local_stack, airflow_env, tmp_path) -> None:
    policy = json.loads(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_text())
    policy["anyOf"][0]["allOf"].append({"claim": "x-ms-sevsnpvm-smt-allowed", "equals": "false"})
    other = tmp_path / "other-policy.json"
    other.write_text(json.dumps(policy))
    operator = EnvironmentPreparationOperator(task_id="prepare_environment", release_policy_path=str(other))
    with pytest.raises(SecurityCheckFailed, match=r"environment preparation: security check failed \(KekPolicyMismatch\)"):
        operator.execute(task_context(new_run_id()))


def test_an_approved_policy_the_vault_might_read_otherwise_is_a_configuration_error(local_stack, airflow_env, tmp_path) -> None:
    policy = json.loads(Path(local_stack.env["SECURETRAIN_RELEASE_POLICY"]).read_text())
    policy["anyOf"][0]["allOf"].append({"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False})
    undocumented = tmp_path / "undocumented-policy.json"
    undocumented.write_text(json.dumps(policy))
    operator = EnvironmentPreparationOperator(task_id="prepare_environment", release_policy_path=str(undocumented))
    with pytest.raises(AirflowFailException, match="x-ms-sevsnpvm-is-debuggable equals false, not a string"):
        operator.execute(task_context(new_run_id()))


def test_no_approved_release_policy_is_a_configuration_error(airflow_env, monkeypatch) -> None:
    monkeypatch.delenv("SECURETRAIN_RELEASE_POLICY")
    with pytest.raises(AirflowFailException, match="no approved release policy"):
        EnvironmentPreparationOperator(task_id="prepare_environment").execute(task_context(new_run_id()))


def test_a_kek_the_data_owner_never_created_is_refused(airflow_env) -> None:
    operator = EnvironmentPreparationOperator(task_id="prepare_environment", kek_name="never-created")
    with pytest.raises(AirflowFailException, match="the vault has no KEK named 'never-created'"):
        operator.execute(task_context(new_run_id()))
