"""The DAGs end to end under `airflow dags test`, against the real local stack.

data_onboarding publishes a sealed dataset, each to its own asset (breast-cancer's being the one secure_retraining is
scheduled on); secure_training runs every stage to success, and so does a run under the example consortium's contract
with DP-SGD; and with a trainer whose code was changed, the run fails at training with the attestation reason while
audit and cleanup still run and the audit log records the refusal.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from securetrain.localstack import StackLayout, data_owner
from securetrain.localstack.consortium import form_consortium
from securetrain.localstack.airflow_env import metadata_database, run_airflow
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.checkpoints import load_or_create_signing_key
from securetrain.core.audit.store import BlobAuditStore
from securetrain.core.model_registry import ModelRegistry
from securetrain.core.storage import BlobStore
from tests.agent_process import AgentProcess, source_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "breast-cancer-classifier"


def dags_test(state_dir: Path, dag_id: str, *extra: str, overrides: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_airflow(state_dir, ["dags", "test", dag_id, *extra], capture_output=True, overrides=overrides)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def audit_log_of(text: str) -> str:
    match = re.search(r"report reports/([^/\s]+)/audit\.json", text)
    assert match, "the audit stage named no report"
    return match.group(1)


def audit_entries(local_stack, log_name: str) -> list[dict]:
    with BlobAuditStore.from_settings(local_stack.settings(), log_name) as store:
        log = AuditLog(store)
        public_key = load_or_create_signing_key(local_stack.layout.audit_signing_key).public_key()
        log.verify(public_key)
        return [json.loads(entry.line) for entry in log.entries()]


def asset_events(state_dir: Path) -> list[tuple[str, dict]]:
    """Every asset event in Airflow's metadata database: the asset's name and the event's extra."""
    with contextlib.closing(sqlite3.connect(metadata_database(state_dir))) as db:
        rows = db.execute("SELECT asset.name, asset_event.extra FROM asset_event JOIN asset ON asset.id = asset_event.asset_id")
        return [(name, json.loads(extra)) for name, extra in rows]


def test_onboarding_publishes_each_owner_s_dataset_to_its_own_asset(onboarded_dataset, local_stack, tmp_path: Path) -> None:
    assert any(name == "sealed-dataset-breast-cancer" and extra["manifest"].startswith("datasets/breast-cancer/")
               for name, extra in asset_events(onboarded_dataset))  # fmt: skip
    source = tmp_path / "cohort.csv"
    source.write_text("age,smoker,outcome\n" + "".join(f"{30 + i},{i % 2},{i % 3 == 0:d}\n" for i in range(40)))
    dataset_id = f"cohort-{uuid.uuid4().hex[:8]}"
    conf = {"dataset_id": dataset_id, "source": str(source), "label": "outcome", "features": ["age", "smoker"],
            "version": "v1", "shard_rows": 25, "expectation_suite": {"name": "cohort", "expectations": [
                {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "outcome"}}]}}  # fmt: skip
    owner = data_owner.airflow_connection(StackLayout(local_stack.state_dir))
    result = dags_test(onboarded_dataset, "data_onboarding", "--conf", json.dumps(conf), overrides=owner)
    assert result.returncode == 0, output(result)[-8000:]
    [extra] = [extra for name, extra in asset_events(onboarded_dataset) if name == f"sealed-dataset-{dataset_id}"]
    assert extra["version"] == "v1" and extra["manifest"] == f"datasets/{dataset_id}/v1/manifest.json"
    assert re.fullmatch(r"[0-9a-f]{64}", extra["manifest_sha256"])


def test_secure_training_reaches_success_through_every_stage(onboarded_dataset, local_stack) -> None:
    with BlobStore.from_settings(local_stack.settings()) as store:
        before = ModelRegistry(store).versions(MODEL)
    result = dags_test(onboarded_dataset, "secure_training")
    text = output(result)
    assert result.returncode == 0, text[-8000:]
    for stage in ("prepare_environment", "check_data_security", "attestation_status", "train", "enclave_health",
                  "register_model", "audit", "cleanup"):  # fmt: skip
        assert f"[DAG TEST] end task task_id={stage}" in text, stage
    assert re.search(r"Marking run <DagRun secure_training .*> successful", text)
    assert "epoch 5 done" in text and "the TEE attested for Airflow's nonce" in text
    with BlobStore.from_settings(local_stack.settings()) as store:
        versions = ModelRegistry(store).versions(MODEL)
        manifest = ModelRegistry(store).get(MODEL, versions[-1]).manifest
        assert not any(store.list_blobs("checkpoints", manifest["lineage"]["run_id"] + "/"))  # cleaned up
    assert len(versions) == len(before) + 1
    lineage = manifest["lineage"]
    assert lineage["attestation"]["x-ms-sevsnpvm-hostdata"] == local_stack.env["SECURETRAIN_CVM_HOST_DATA"]
    assert lineage["release_policy_sha256"] and lineage["dataset"]["shards"][0]["plaintext_sha256"]
    kinds = {entry["event"]["kind"] for entry in audit_entries(local_stack, audit_log_of(text))}
    assert {"run_started", "evidence_appraised", "key_released", "data_validated", "checkpoint_written",
            "model_registered", "cleanup_done"} <= kinds  # fmt: skip


def test_secure_training_under_a_contract_with_dp_reaches_success(onboarded_dataset, local_stack) -> None:
    pool = form_consortium(local_stack.layout, local_stack.env["SECURETRAIN_ATTESTATION_ENDPOINT"])
    model = f"pooled-{uuid.uuid4().hex[:8]}"
    # Inside the example contract's terms; two epochs (DP-SGD is about ten times slower than plain training).
    conf = {"contract": pool.digest, "dp_epsilon": 1.0, "epochs": 2, "model_params": {"hidden": [16]}, "model_name": model}
    result = dags_test(onboarded_dataset, "secure_training", "--conf", json.dumps(conf))
    text = output(result)
    assert result.returncode == 0, text[-8000:]
    assert re.search(r"Marking run <DagRun secure_training .*> successful", text)
    assert f"contract {pool.digest} (breast-cancer-pooled-2026) is in force" in text
    assert "breast-cancer-b version" in text and "the manifest is the one the contract pins" in text
    with BlobStore.from_settings(local_stack.settings()) as store:
        registry = ModelRegistry(store)
        lineage = registry.get(model, registry.versions(model)[-1]).manifest["lineage"]
    assert lineage["contract"]["digest"] == pool.digest
    assert lineage["contract"]["signers"] == ["hospital-a", "hospital-b", "research-lab"]
    assert 0 < lineage["privacy"]["epsilon"] <= 1.0 and lineage["privacy"]["accountant"] == "prv"
    assert [copy["party"] for copy in lineage["recipients"]] == ["research-lab"]
    kinds = {entry["event"]["kind"] for entry in audit_entries(local_stack, audit_log_of(text))}
    assert {"run_started", "governance", "privacy_budget", "key_released", "model_registered", "cleanup_done"} <= kinds


def test_a_changed_trainer_fails_the_run_at_training_and_audit_and_cleanup_still_run(
    onboarded_dataset, local_stack, tmp_path: Path
) -> None:
    code_root = tmp_path / "code"
    with (source_copy(code_root) / "tee" / "training" / "loop.py").open("a") as source:
        source.write("# an unreviewed change\n")
    agent = AgentProcess(local_stack, tmp_path, code_root=code_root)
    agent.start()
    connection = json.loads(json.dumps({"conn_type": "securetrain_cvm", "host": f"https://127.0.0.1:{agent.port}",
        "extra": {"backend": "local", "ca_bundle": str(local_stack.ca_bundle),
                  "client_cert": local_stack.env["SECURETRAIN_CVM_PIPELINE_CERT"],
                  "client_key": local_stack.env["SECURETRAIN_CVM_PIPELINE_KEY"]}}))  # fmt: skip
    try:
        # The attestation sensor would refuse this TEE first (see test_sensors); here it is passed over so
        # the run reaches training, where Key Vault is the one to say no.
        result = dags_test(onboarded_dataset, "secure_training", "--mark-success-pattern", "attestation_status",
                           overrides={"AIRFLOW_CONN_SECURETRAIN_CVM": json.dumps(connection)})  # fmt: skip
    finally:
        agent.stop()
    text = output(result)
    assert result.returncode != 0
    assert re.search(r"Marking run <DagRun secure_training .*> failed", text)
    assert re.search(r"the training job \w+ failed: \w+: .*(HOST_DATA|hostdata)", text, re.IGNORECASE), text[-8000:]
    assert "[DAG TEST] end task task_id=cleanup" in text and "[DAG TEST] end task task_id=audit" in text
    entries = audit_entries(local_stack, audit_log_of(text))
    denials = [e["event"] for e in entries if e["event"]["kind"] in ("key_denied", "evidence_appraised")
               and "refused" in json.dumps(e["event"]).lower() or e["event"]["kind"] == "key_denied"]  # fmt: skip
    assert denials, entries
    assert any(e["event"]["kind"] == "cleanup_done" for e in entries)
