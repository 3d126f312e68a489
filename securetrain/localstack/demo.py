"""``securetrain demo`` (what ``make demo`` runs): the secure training DAG end to end on the local stack.

The stack comes up, Airflow's metadata database is migrated, then ``airflow dags test`` runs ``data_onboarding``
(as the data owner), ``secure_training`` and ``key_rotation``, and a summary is read back from what the runs left
behind: the registered model version's manifest and the audit log, verified afresh. Then the two-hospital
consortium (:mod:`securetrain.localstack.consortium`): hospital-a publishes its half with ``data_onboarding``,
hospital-b with ``securetrain dataset publish``, the three parties sign the contract, each hospital binds its KEK
to it, and ``secure_training`` trains one model on both halves under it with DP-SGD; its summary shows the
contract, each owner's key release, the ε spent and the budget left, and the model opened by the consumer.
The full Airflow output goes to ``<state>/demo/<dag>.log``; the console shows each stage as it runs.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
from azure.keyvault.keys import KeyVaultKeyIdentifier

from securetrain.localstack.airflow_env import migrate, process_environment
from securetrain.core.audit.checkpoints import key_fingerprint, load_or_create_signing_key, public_key_pem
from securetrain.core.attestation.claims import workload_binding
from securetrain.core.audit.log import AuditLog
from securetrain.core.audit.store import BlobAuditStore
from securetrain.core.errors import SecuretrainError
from securetrain.core.contracts.job_spec import DatasetRef
from securetrain.core.model_registry import ModelRegistry
from securetrain.core.onboarding import DatasetManifest
from securetrain.core.sealed import KekPrivateKey, SealedReader
from securetrain.core.settings import ServiceSettings
from securetrain.core.storage import BlobStore
from securetrain.localstack import StackConfig, consortium, data_owner, up
from securetrain.localstack.identities import PIPELINE_IDENTITY
from securetrain.localstack.layout import StackLayout, write_file
from securetrain.localstack.settings import settings_path

MODEL = "breast-cancer-classifier"
#: The ε the consortium's run may spend (the contract allows 3 per run, 8 in total per dataset).
DEMO_EPSILON = 2.0
# What of Airflow's output the console shows: stage boundaries, training progress, the run's end.
_SHOWN = re.compile(r"\[DAG TEST\] starting task_id=(\S+)|(epoch \d+ done.*?)(?: \[|$)|(Marking run .*? (successful|failed))")


class DemoFailed(SecuretrainError):
    """A DAG of the demo did not succeed; its log says why."""


def _step(number: int, text: str) -> None:
    print(f"[{number}] {text}", flush=True)


def _dags_test(
    state_dir: Path, dag_id: str, overrides: Mapping[str, str] | None = None, *, conf: Mapping[str, object] | None = None,
    log_name: str | None = None,
) -> str:
    """Run ``airflow dags test dag_id`` (with the trigger form's ``conf``), echoing its stages; the whole output,
    also in ``<state>/demo/<log_name or dag_id>.log``. ``overrides`` add variables to the pipeline's Airflow
    environment (the data owner's connection, for the owner's own DAG)."""
    log_path = state_dir / "demo" / f"{log_name or dag_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = process_environment(state_dir, overrides=overrides)
    airflow = str(Path(sys.executable).parent / "airflow")
    lines = []
    with log_path.open("w") as log, subprocess.Popen(
        [airflow, "dags", "test", dag_id, *(("-c", json.dumps(conf)) if conf else ())], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            lines.append(line)
            match = _SHOWN.search(line)
            if match and match.group(1):
                print(f"    {dag_id}: {match.group(1)}", flush=True)
            elif match and match.group(2):
                print(f"      {match.group(2).strip()}", flush=True)
    text = "".join(lines)
    if process.returncode != 0:
        raise DemoFailed(f"`airflow dags test {dag_id}` failed (exit {process.returncode}); see {log_path}")
    return text


def _publish(key_file: Path, public_file: Path) -> Path:
    """Write the public half of the pipeline's signing key ``key_file`` to ``public_file``, as its operator
    publishes it for verifiers."""
    write_file(public_file, public_key_pem(load_or_create_signing_key(key_file)), mode=0o644)
    return public_file


def _rotation(settings: ServiceSettings, output: str) -> dict[str, object]:
    """The ``rotation`` event key_rotation recorded, from the audit log its output names."""
    match = re.search(r"rotation recorded in audit log (\S+):", output)
    if match is None:
        raise DemoFailed("key_rotation named no audit log")
    with BlobAuditStore.from_settings(settings, match.group(1)) as audit_store:
        events = [json.loads(entry.line)["event"] for entry in AuditLog(audit_store).entries()]
    rotations = [event["details"] for event in events if event["kind"] == "rotation"]
    if not rotations or not rotations[-1].get("complete"):
        raise DemoFailed(f"key_rotation recorded no complete rotation in audit log {match.group(1)}")
    return rotations[-1]


def run(state_dir: Path | None = None) -> dict[str, object]:
    config = StackConfig.resolve(state_dir)
    root = config.layout.root
    _step(1, f"bringing up the local stack in {root}, platform {config.platform.value}: {config.platform.description}")
    env = up(config)
    # The demo reads results back as the pipeline's identity, with the settings the stack wrote for it.
    pipeline_settings = settings_path(config.layout, PIPELINE_IDENTITY)
    settings = ServiceSettings.load(pipeline_settings)
    _step(2, "migrating Airflow's metadata database (SQLite under the state directory)")
    migrate(root)
    _step(3, "data owner: airflow dags test data_onboarding (validate, seal for the KEK, upload, publish)")
    # The data owner's run: only it gets the owner's signing key for the manifest.
    _dags_test(root, "data_onboarding", overrides=data_owner.airflow_connection(config.layout))
    _step(4, "airflow dags test secure_training")
    output = _dags_test(root, "secure_training")
    match = re.search(r"report reports/([^/\s]+)/audit\.json", output)
    if match is None:
        raise DemoFailed("the audit stage named no report")
    run_name = match.group(1)
    _step(5, "airflow dags test key_rotation (new KEK version; the TEE rewraps every data key to it)")
    rotation = _rotation(settings, _dags_test(root, "key_rotation"))

    _step(6, "summary, read back from the model registry and the audit log")
    with BlobStore.from_settings(settings) as store:
        registry = ModelRegistry(store)
        version = registry.get(MODEL, registry.versions(MODEL)[-1])
        report = json.loads(b"".join(store.download_chunks("reports", f"{run_name}/audit.json")))
    lineage = version.manifest["lineage"]
    claims = lineage["attestation"]
    layout = StackLayout(root)
    audit_public = _publish(layout.audit_signing_key, layout.policies_dir / "audit-public-key.pem")
    model_public = _publish(layout.model_signing_key, layout.policies_dir / "model-signing-public-key.pem")
    with BlobAuditStore.from_settings(settings, run_name) as audit_store:
        public_key = load_or_create_signing_key(layout.audit_signing_key).public_key()
        verdict = AuditLog(audit_store).verify(public_key)
        events = [json.loads(entry.line)["event"] for entry in AuditLog(audit_store).entries()]
    releases = {event["source"] for event in events if event["kind"] == "key_released"}
    cleaned = [event["details"] for event in events if event["kind"] == "cleanup_done"]
    metrics = lineage["metrics"]
    validation = lineage.get("validation") or {}
    print(f"    attestation:  {lineage['tee_type']}, {workload_binding(claims)}, validated by Airflow against "
          f"release policy {lineage['release_policy_sha256'][:16]}…")
    print(f"    key release:  {version.manifest['sealed_model']['kek_id']} released to the TEE's key "
          f"(recorded by {' and '.join(sorted(releases)) or 'nobody'})")
    print(f"    validation:   {validation.get('statistics', {})} (inside the TEE; aggregates only)")
    print(f"    training:     {lineage['hyperparameters']['epochs']} epochs on {lineage['device']}; "
          + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    print(f"    model:        {MODEL} version {version.version}, sealed sha256 {version.manifest['sealed_model']['sha256'][:16]}…")
    print(f"    audit:        {verdict.summary()} (report reports/{report['run']}/audit.json)")
    print(f"    cleanup:      {cleaned[-1] if cleaned else 'not recorded'}")
    print(f"    rotation:     new KEK version {rotation['kek_id']}: the TEE rewrapped {rotation['rewrapped']} data "
          f"key(s) and checked {rotation['dek_checked_in_tee']}; every sealed blob ({rotation['verified']}) names the "
          "new version (no data re-encrypted, no data key outside the TEE)")
    print(f"    run report:   reports/{run_name}/report.html (also on the Secure training page: make airflow)")
    print(f"    verify it:    .venv/bin/securetrain --settings {pipeline_settings} models verify {MODEL} "
          f"{version.version} --public-key {model_public}")
    print(f"                  .venv/bin/securetrain --settings {pipeline_settings} audit verify --log {run_name} "
          f"--public-key {audit_public} --audit-key-fingerprint {key_fingerprint(public_key)}")
    summary = {"run": run_name, "model_version": version.version, "audit_entries": verdict.entries, "metrics": metrics,
               "rotated_to": rotation["kek_id"], "contract": _consortium_run(config.layout, env, pipeline_settings)}  # fmt: skip
    print("demo complete:", json.dumps(summary))
    return summary


def _consortium_run(layout: StackLayout, env: Mapping[str, str], pipeline_settings: Path) -> dict[str, object]:
    """The two-hospital consortium, its contract and a DP-SGD run under it (module docstring); its summary."""
    root, authority, name = layout.root, env["SECURETRAIN_ATTESTATION_ENDPOINT"], uuid.uuid4().hex[:8]
    _step(7, "consortium: hospital-a and hospital-b each make a KEK, released to nothing until bound to a contract")
    keks = consortium.contract_keks(layout, authority, name)
    first, second = data_owner.DATA_OWNERS
    version = f"v-{name}"
    _step(8, "hospital-a publishes its half of breast-cancer with its own run of data_onboarding")
    _dags_test(root, "data_onboarding", overrides=data_owner.airflow_connection(layout, first), log_name="data_onboarding-hospital-a",
               conf={"dataset_id": consortium.DATASET_OF[first.party], "source": str(consortium.half_of_breast_cancer(layout, first)),
                     "label": "label", "version": version, "kek_name": KeyVaultKeyIdentifier(keks[first.party]).name})  # fmt: skip
    _step(9, "hospital-b publishes its half with `securetrain dataset publish` (it runs no Airflow)")
    owner_settings = settings_path(layout, "data-owner")
    _securetrain(root, "--settings", str(owner_settings), "dataset", "publish", "--dataset-id",
                 consortium.DATASET_OF[second.party], "--version", version, "--source",
                 str(consortium.half_of_breast_cancer(layout, second)), "--label", "label", "--kek-id", keks[second.party],
                 "--owner-key", str(data_owner.signing_key_path(layout, second)), "--container", consortium.DATASETS_CONTAINER)  # fmt: skip
    _step(10, "hospital-a, hospital-b and research-lab sign the contract; each hospital binds its KEK to it")
    with BlobStore.from_settings(ServiceSettings.load(owner_settings)) as store:
        datasets = {}
        for owner in data_owner.DATA_OWNERS:
            ref = DatasetRef(container=consortium.DATASETS_CONTAINER,
                             manifest=DatasetManifest.blob_name(consortium.DATASET_OF[owner.party], version))  # fmt: skip
            datasets[owner.party] = (ref, DatasetManifest.read(store, ref.container, ref.manifest))
    pool = consortium.agree(layout, authority, datasets)
    contract_file = root / "demo" / "contract.json"
    write_file(contract_file, pool.contract.to_bytes(), mode=0o644)
    _step(11, f"airflow dags test secure_training under contract {pool.digest[:16]}… with DP-SGD (ε ≤ {DEMO_EPSILON})")
    _dags_test(root, "secure_training", log_name="secure_training-contract", conf={
        "contract": pool.digest, "dp_epsilon": DEMO_EPSILON, "dp_delta": 1e-5, "dp_max_grad_norm": 1.0,
        "model_params": {"hidden": [16]}, "epochs": 3, "model_name": "breast-cancer-pooled",
    })  # fmt: skip

    _step(12, "consortium summary, read back from the registry, the budget ledger and the consumer's copy")
    contract = pool.contract.contract
    with BlobStore.from_settings(ServiceSettings.load(pipeline_settings)) as store:
        registry = ModelRegistry(store)
        model = registry.get("breast-cancer-pooled", registry.versions("breast-cancer-pooled")[-1])
        statement = model.manifest["provenance"]["statement"]
        governance = statement["governance"]
        # The registry keeps the consumer's copy (the run's own outputs are cleaned up), as the TEE signed it.
        [copy] = model.manifest["lineage"]["recipients"]
        sealed = b"".join(store.download_chunks(*copy["blob"].split("/", 1)))
    lab_key = KekPrivateKey(consortium.consumer_recipient_key(layout))
    reader = SealedReader(io.BytesIO(sealed), lab_key, expected_context={
        "run_id": statement["run_id"], "kind": "model-recipient", "party": copy["party"],
        "source_sha256": statement["sealed_model_sha256"]})  # fmt: skip
    tensors = safetensors.torch.load(bytes(reader.read_plaintext()))
    privacy = governance["privacy"]
    budget = _securetrain(root, "--settings", str(pipeline_settings), "contract", "budget", str(contract_file))
    print(f"    contract:     {contract.contract_id} {pool.digest}")
    print(f"                  signed by {', '.join(p.id for p in contract.parties)}; in force until {contract.validity.expires}")
    for owner in data_owner.DATA_OWNERS:
        print(f"    {owner.party + ':':<14}{datasets[owner.party][1].dataset_id} {version}, KEK "
              f"{pool.kek_id(owner)} released to the TEE under its own contract-bound policy")  # fmt: skip
    print(f"    privacy:      DP-SGD spent ε {privacy['epsilon']:.4f} (δ {privacy['delta']}, {privacy['accountant']} "
          f"accountant, noise {privacy['noise_multiplier']:.3f}), ledger entry {privacy['ledger']['seq']}")
    print("    budget:       " + "\n                  ".join(budget.strip().splitlines()))
    print(f"    consumer:     {copy['party']} opened its copy {copy['blob']} with its own key: {len(tensors)} tensors")
    # Anyone can check the model's provenance, and that the ledger still holds the spend the TEE signed.
    model_public = layout.policies_dir / "model-signing-public-key.pem"
    verified = _securetrain(root, "--settings", str(pipeline_settings), "models", "verify", "breast-cancer-pooled",
                            str(model.version), "--public-key", str(model_public))  # fmt: skip
    ledger = next((line for line in verified.splitlines() if "privacy-budget ledger" in line), "")
    print(f"    provenance:   verified; {ledger.removeprefix('ok  ')}")
    print(f"    check it:     .venv/bin/securetrain contract verify {contract_file}")
    print(f"                  .venv/bin/securetrain --settings {pipeline_settings} models verify breast-cancer-pooled "
          f"{model.version} --public-key {model_public}")
    return {"digest": pool.digest, "signers": [p.id for p in contract.parties], "epsilon": privacy["epsilon"],
            "model": f"breast-cancer-pooled {model.version}"}  # fmt: skip


def _securetrain(state_dir: Path, *argv: str) -> str:
    """Run ``securetrain ARGV`` as its own process (as a party would on its machine); its output."""
    script = str(Path(sys.executable).parent / "securetrain")
    result = subprocess.run([script, *argv], capture_output=True, text=True, env=process_environment(state_dir))
    if result.returncode != 0:
        raise DemoFailed(f"`securetrain {' '.join(argv[2:4])}` failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout
