"""The stages of a run under a signed contract, each operator against the local stack with the example consortium
(two hospitals, a research lab; ``form_consortium``): the contract verified and each owner's KEK bound to it, every
contracted dataset checked at its pinned version, the attestation held to the contract's workloads, a DP-SGD job
trained under the contract, the model registered with the contract in its lineage and the consumer's copy kept,
and the run page's contract and budget. Refused: a contract not published, revoked (before the run, and between
its check and its job), a KEK version not bound to it, a manifest that is not the pinned one, a job outside its
terms (a governance event in the run's audit log)."""

from __future__ import annotations

import datetime
import io
import json
import uuid

import pytest

from airflow.sdk.exceptions import AirflowFailException
from securetrain.airflow.audit import audit_signing_key
from securetrain.airflow.failures import SecurityCheckFailed
from securetrain.airflow.locations import job_run_id
from securetrain.airflow.model_management import ModelManagementOperator
from securetrain.airflow.plugin import STAGES, RunView, StageResult, contract_view
from securetrain.airflow.stage_results import read_result
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import AUDIT_CONTAINER, BlobAuditStore
from securetrain.core.governance.contract import contract_release_policy
from securetrain.core.governance.revocation import revoke
from securetrain.core.governance.store import ContractStore
from securetrain.core.keyvault import create_contract_kek, key_client_from_settings
from securetrain.core.approved_release_policies import UNBOUND_CONTRACT
from securetrain.core.model_registry import ModelRegistry
from securetrain.core.governance.store import CONTRACTS_CONTAINER
from securetrain.localstack.consortium import form_consortium
from securetrain.localstack.data_owner import FIRST_OWNER, SECOND_OWNER, signing_key
from securetrain.localstack.services.attestation import local_release_policy
from tests.stages import Stages

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.stage_fixtures"]

#: What the example contract allows: DP-SGD with ε at most 3 per run, δ 1e-5, clipping norm 1.
PRIVACY = {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0, "accountant": "prv"}
MODEL_NAME = f"contract-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def checked(airflow_env, pool) -> Stages:
    """A run under the contract through its data check and attestation."""
    stages = Stages(None, contract=pool.digest)
    stages.prepare_environment()
    stages.check_data_security()
    stages.attestation_status()
    return stages


def test_prepare_verifies_the_contract_and_each_owner_s_kek_bound_to_it(checked, pool) -> None:
    environment = checked.results["prepare_environment"]
    assert environment["contract"] == {
        "digest": pool.digest, "contract_id": "breast-cancer-pooled-2026", "purpose": pool.contract.contract.purpose,
        "signers": ["hospital-a", "hospital-b", "research-lab"],
        "kek_ids": {"breast-cancer-a": pool.kek_id(FIRST_OWNER), "breast-cancer-b": pool.kek_id(SECOND_OWNER)},
    }  # fmt: skip
    # The job's KEK is the first dataset's; the policy every KEK carries is the contract's.
    assert environment["kek_id"] == pool.kek_id(FIRST_OWNER)
    assert environment["release_policy_sha256"] == contract_release_policy(pool.contract.contract).sha256


def test_the_data_check_checks_every_contracted_dataset_at_its_pinned_version(checked, pool) -> None:
    data = checked.results["check_data_security"]
    assert sorted(ref["manifest"] for ref in data["job_datasets"]) == sorted(ref.manifest for ref in pool.dataset_refs())
    assert [(m["dataset_id"], m["manifest_sha256"]) for m in data["manifests"]] == [
        (manifest.dataset_id, manifest.sha256()) for _, manifest in pool.datasets.values()
    ]
    assert {shard["kek_id"] for shard in data["datasets"]} == {pool.kek_id(FIRST_OWNER), pool.kek_id(SECOND_OWNER)}
    # A TEE answering Airflow's bare nonce is held to the contract's workloads (it enforces no contract then).
    assert checked.results["attestation_status"]["x-ms-sevsnpvm-hostdata"]


@pytest.fixture(scope="module")
def trained(checked) -> Stages:
    checked.results["train"] = checked.training_operator(deferrable=False, privacy=PRIVACY).execute(checked.context())
    return checked


def test_a_dp_job_trains_under_the_contract_and_its_spend_and_the_consumer_s_copy_come_back(trained, pool) -> None:
    result = trained.results["train"]
    assert result["state"] == "succeeded"
    assert 0 < result["privacy"]["epsilon"] <= 1.0 and result["privacy"]["accountant"] == "prv"
    [copy] = result["recipients"]
    assert copy["party"] == "research-lab"
    assert result["provenance"]["statement"]["governance"]["contract"] == pool.digest


def test_the_model_is_registered_with_the_contract_the_spend_and_the_consumer_s_copy(local_stack, trained, pool, store) -> None:
    results = trained.results
    registered = ModelManagementOperator(
        task_id="register_model", model_name=MODEL_NAME, training=results["train"], data=results["check_data_security"],
        environment=results["prepare_environment"], hyperparameters={},
    ).execute(trained.context())  # fmt: skip
    lineage = ModelRegistry(store).get(MODEL_NAME, registered["version"]).manifest["lineage"]
    assert lineage["contract"] == {"digest": pool.digest, "contract_id": "breast-cancer-pooled-2026",
                                   "signers": ["hospital-a", "hospital-b", "research-lab"]}  # fmt: skip
    assert lineage["privacy"]["epsilon"] == results["train"]["privacy"]["epsilon"] and lineage["privacy"]["delta"] == 1e-5
    assert [d["dataset_id"] for d in lineage["datasets"]] == ["breast-cancer-a", "breast-cancer-b"]
    [kept] = lineage["recipients"]
    [copy] = results["train"]["recipients"]
    assert kept["party"] == "research-lab" and kept["sealed_sha256"] == copy["sealed_sha256"]
    container, blob = kept["blob"].split("/", 1)
    assert b"".join(store.download_chunks(container, blob)) == b"".join(
        store.download_chunks(copy["blob"]["container"], copy["blob"]["blob"]))  # fmt: skip


def test_the_run_page_shows_the_contract_and_each_dataset_s_budget_from_the_verified_ledger(trained) -> None:
    stages = {task_id: StageResult(task_id, "success", None, None, read_result(task_id, value), None)
              for task_id, value in trained.results.items() if task_id in STAGES}  # fmt: skip
    view = contract_view(RunView("secure_training", trained.run_id, "success", None, None, stages))
    assert view is not None and view.budget_problem is None, view
    spent = trained.results["train"]["privacy"]["epsilon"]
    assert view.contract_id == "breast-cancer-pooled-2026" and view.signers == ("hospital-a", "hospital-b", "research-lab")
    assert view.privacy.epsilon == spent
    assert [(row.dataset_id, row.total, row.spent, row.reserved) for row in view.budget] == [
        ("breast-cancer-a", 8.0, spent, 0.0), ("breast-cancer-b", 8.0, spent, 0.0)]  # fmt: skip
    assert all(abs(row.left - (8.0 - spent)) < 1e-9 for row in view.budget)
    # A run without a contract has no contract section.
    plain = {"prepare_environment": StageResult("prepare_environment", "success", None, None, read_result(
        "prepare_environment", {key: value for key, value in trained.results["prepare_environment"].items() if key != "contract"}), None)}  # fmt: skip
    assert contract_view(RunView("secure_training", "manual__plain", "success", None, None, plain)) is None


def _governance_events(store, stages: Stages) -> list[dict]:
    log = AuditLog(BlobAuditStore(store.container_client(AUDIT_CONTAINER), job_run_id("secure_training", stages.run_id)))
    log.verify(audit_signing_key().public_key())
    return [dict(entry.event.details) for entry in log.entries() if str(entry.event.kind) == "governance"]


def test_a_job_outside_the_contract_fails_without_retry_naming_the_term_and_is_audited(checked, store) -> None:
    stages = Stages(None, f"{checked.run_id}_epochs", contract=checked.contract)
    stages.results = {task_id: checked.results[task_id] for task_id in ("prepare_environment", "check_data_security")}
    too_long = {"epochs": 21, "batch_size": 64, "learning_rate": 0.01, "seed": 7}
    operator = stages.training_operator(deferrable=False, privacy=PRIVACY, hyperparameters=too_long)
    with pytest.raises(SecurityCheckFailed, match=r"breaks the contract's term job_space\.max_epochs"):
        operator.execute(stages.context())
    [event] = _governance_events(store, stages)
    assert event["outcome"] == "job refused" and event["term"] == "job_space.max_epochs" and event["status"] == 400


def test_a_contract_not_published_is_a_configuration_error(airflow_env) -> None:
    with pytest.raises(AirflowFailException, match=f"no contract {'ab' * 32} is published in container 'contracts'"):
        Stages(None, contract="ab" * 32).prepare_environment()


def test_a_revocation_refuses_the_job_and_then_the_run_naming_the_party(local_stack, authority, airflow_env, store) -> None:
    pool = form_consortium(local_stack.layout, authority)
    stages = Stages(None, contract=pool.digest)
    stages.prepare_environment()
    stages.check_data_security()
    # Hospital B withdraws between the run's checks and its job: the TEE refuses the job (424).
    token = revoke(pool.contract.contract, "hospital-b", signing_key(local_stack.layout, SECOND_OWNER),
                   reason="consent withdrawn", at=datetime.datetime.now(datetime.UTC))  # fmt: skip
    ContractStore(store, CONTRACTS_CONTAINER).add_revocation(pool.digest, token)
    with pytest.raises(SecurityCheckFailed, match=r"names a contract not in force .*'hospital-b' revoked"):
        stages.training_operator(deferrable=False, privacy=PRIVACY).execute(stages.context())
    [event] = _governance_events(store, stages)
    assert event["term"] is None and event["status"] == 424 and "hospital-b" in event["message"]
    # A new run is refused at once, before any TEE work.
    with pytest.raises(SecurityCheckFailed, match=r"\(ContractRevoked\): party 'hospital-b' revoked the contract"):
        Stages(None, contract=pool.digest).prepare_environment()


def test_a_kek_version_not_bound_to_the_contract_or_a_manifest_not_pinned_is_refused(local_stack, authority, airflow_env,
                                                                                    store) -> None:  # fmt: skip
    pool = form_consortium(local_stack.layout, authority)
    # Hospital A's manifest replaced in storage: another document than the one the contract pins.
    [ref_a] = [ref for ref in pool.dataset_refs() if ref.manifest.startswith("breast-cancer-a/")]
    body = io.BytesIO()
    store.download_to(ref_a.container, ref_a.manifest, body)
    original = body.getvalue()
    changed = json.dumps({**json.loads(original), "created_at": "2020-01-01T00:00:00Z"}).encode()
    store.upload_stream(ref_a.container, ref_a.manifest, io.BytesIO(changed), length=len(changed), overwrite=True)
    stages = Stages(None, contract=pool.digest)
    stages.prepare_environment()
    with pytest.raises(SecurityCheckFailed, match=r"term datasets\[breast-cancer-a\]\.manifest"):
        stages.check_data_security()
    store.upload_stream(ref_a.container, ref_a.manifest, io.BytesIO(original), length=len(original), overwrite=True)
    # Hospital B makes a new version of its KEK and does not bind it to the contract.
    kek_name = pool.kek_id(SECOND_OWNER).split("/keys/", 1)[1].split("/", 1)[0]
    unbound = local_release_policy(local_stack.layout, authority, contract_digest=UNBOUND_CONTRACT)
    with key_client_from_settings(local_stack.settings("data-owner")) as vault:
        create_contract_kek(vault, kek_name, unbound)
    with pytest.raises(SecurityCheckFailed, match=rf"KekPolicyMismatch\): the KEK \S*/keys/{kek_name}/\S+ must not be used"):
        Stages(None, contract=pool.digest).prepare_environment()
