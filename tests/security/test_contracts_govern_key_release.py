"""Two data owners train one model under a contract all parties signed, through the real stack: the agent, the
attestation service, Key Vault and Azurite. Each owner's KEK is released only to the approved workload enforcing
the contract; a job outside its terms, a contract not in force, a revocation or an owner withdrawing its key
stops the run; DP runs spend the accountant's ε from the contract's budget until it is spent."""

from __future__ import annotations

import datetime
import io
import json
import secrets
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
import pytest
import safetensors.torch

from securetrain.core.cli import main
from securetrain.core.cvm_client import CvmAccessDenied, CvmAttestationRefused, CvmClient, CvmRequestRejected
from securetrain.core.contracts.jobs import JobState, JobView
from securetrain.core.governance.budget import read_ledger
from securetrain.core.governance.signatures import SignedContract

from securetrain.core.model_export import approve_export
from securetrain.core.model_provenance import recipient_key
from securetrain.core.keyvault import KeyVaultKeyIdentifier, key_client_from_settings
from securetrain.core.sealed import KekPrivateKey, SealedReader
from securetrain.localstack import consortium as consortia
from securetrain.localstack.consortium import Consortium, form_consortium
from securetrain.localstack.data_owner import FIRST_OWNER, SECOND_OWNER, signing_key, signing_key_path
from securetrain.localstack.identities import PIPELINE_IDENTITY
from securetrain.tee.attest import TeeKey
from securetrain.tee.privacy_budget import open_ledger
from securetrain.tee.release import KeyReleaseDenied
from securetrain.tee.tee_services import attester, key_releaser
from tests.jobs import in_the_tee

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(local_stack) -> CvmClient:
    return local_stack.agent_client(PIPELINE_IDENTITY)


def job(pool: Consortium, **changes: Any) -> dict[str, Any]:
    """A job inside the example contract's terms (DP-SGD, ε 1), with a run id of its own; ``changes`` replace fields."""
    run = f"governed__{uuid.uuid4().hex}"
    spec = {
        "run_id": run, "nonce": secrets.token_urlsafe(24), "kek_id": pool.kek_id(FIRST_OWNER),
        "datasets": [ref.model_dump() for ref in pool.dataset_refs()], "columns": {"label": "label"},
        "model": {"name": "mlp", "params": {"hidden": [16]}},
        "hyperparameters": {"epochs": 2, "batch_size": 32, "learning_rate": 0.01, "seed": 7},
        "checkpoints": {"container": "checkpoints", "prefix": f"{run}/"},
        "output": {"container": "models", "blob": f"{run}/model.sealed"},
        "contract": pool.ref.model_dump(),
        "privacy": {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0, "accountant": "prv"},
    }  # fmt: skip
    return {**spec, **changes}


def finished(client: CvmClient, job_id: str, timeout_s: float = 240) -> JobView:
    deadline = time.monotonic() + timeout_s
    while not (view := client.job(job_id)).state.finished:
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
    return view


def tee_kinds(view: JobView) -> list[str]:
    return [entry["kind"] for entry in view.tee_log["entries"]]


def test_two_owners_train_one_model_sealed_to_the_consumer_under_the_contract_they_signed(local_stack, pool, store, client) -> None:
    spec = job(pool)
    view = finished(client, client.submit(spec).job_id)
    assert view.state is JobState.SUCCEEDED, view.error
    kinds = tee_kinds(view)
    assert kinds.index("contract_enforced") < kinds.index("key_released")  # checked before any key was asked for
    released = [entry["details"]["kek_id"] for entry in view.tee_log["entries"] if entry["kind"] == "key_released"]
    assert released == [pool.kek_id(FIRST_OWNER), pool.kek_id(SECOND_OWNER)]
    enforced = next(entry["details"] for entry in view.tee_log["entries"] if entry["kind"] == "contract_enforced")
    assert enforced["contract"] == pool.digest and enforced["signers"] == ["hospital-a", "hospital-b", "research-lab"]
    # What the TEE attested carries the contract: the token behind every signed head names it.
    token = next(entry["details"]["token"] for entry in view.tee_log["entries"] if entry["kind"] == "attested")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["x-ms-runtime"]["contract"] == pool.digest

    # DP-SGD spent what the accountant says, at most what the job asked for; the ledger and the statement agree.
    privacy = view.result.privacy
    assert privacy is not None and 0 < privacy.epsilon <= 1.0 and privacy.accountant == "prv"
    governance = view.result.provenance.statement["governance"]
    assert governance["contract"] == pool.digest and governance["privacy"]["epsilon"] == privacy.epsilon
    spent = [entry["details"] for entry in view.tee_log["entries"] if entry["kind"] == "budget_spent"]
    assert spent and spent[0]["epsilon"] == {"breast-cancer-a": privacy.epsilon, "breast-cancer-b": privacy.epsilon}

    # The consumer's copy opens with the research lab's key, and only the model's tensors are in it.
    [copy] = view.result.recipients
    assert copy.party == "research-lab"
    sealed = b"".join(store.download_chunks(copy.blob.container, copy.blob.blob))
    reader = SealedReader(io.BytesIO(sealed), KekPrivateKey(consortia.consumer_recipient_key(local_stack.layout)),
                          expected_context={"run_id": spec["run_id"], "kind": "model-recipient", "party": "research-lab",
                                            "source_sha256": view.result.provenance.statement["sealed_model_sha256"]})  # fmt: skip
    tensors = safetensors.torch.load(b"".join(bytes(segment) for segment in reader.segments()))
    assert tensors and all(tensor.dtype.is_floating_point for tensor in tensors.values())


@pytest.mark.parametrize(
    ("change", "term"),
    [
        ({"hyperparameters": {"epochs": 21, "batch_size": 32, "learning_rate": 0.01, "seed": 7}}, "job_space.max_epochs"),
        ({"model": {"name": "cnn", "params": {}}}, "job_space.models"),
        ({"model": {"name": "mlp", "params": {"hidden": [256]}}}, "job_space.models[mlp].params.hidden"),
        ({"privacy": None}, "privacy[breast-cancer-a].required"),
        ({"privacy": {"epsilon": 3.5, "delta": 1e-5, "max_grad_norm": 1.0}}, "privacy[breast-cancer-a].epsilon_per_run"),
        ({"privacy": {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 5.0}}, "privacy[breast-cancer-a].max_grad_norm"),
        ({"expectation_suite": {"name": "s", "expectations": [
            {"type": "expect_table_column_count_to_equal", "kwargs": {"value": 31}}]}},
         "job_space.expectation_types"),
    ],
)  # fmt: skip
def test_a_job_outside_the_contract_is_refused_naming_the_term_before_it_exists(pool, client, change, term) -> None:
    spec = {key: value for key, value in job(pool, **change).items() if value is not None}
    with pytest.raises(CvmRequestRejected) as refused:
        client.submit(spec)
    assert refused.value.term == term and term in str(refused.value)
    assert all(view.run_id != spec["run_id"] for view in client.jobs())  # refused before it was queued


def test_a_dataset_the_contract_does_not_cover_is_refused(pool, client, dataset_ref) -> None:
    spec = job(pool, datasets=[*job(pool)["datasets"], dataset_ref.model_dump()])
    with pytest.raises(CvmRequestRejected) as refused:
        client.submit(spec)
    assert refused.value.term == "datasets"


def test_a_contract_missing_a_signature_or_with_one_byte_changed_is_refused(pool, store, client) -> None:
    signed = json.loads(pool.contract.to_bytes())
    # The same contract (the same digest), one party's signature dropped.
    unsigned = SignedContract.model_validate({**signed, "signatures": signed["signatures"][:-1]})
    digest = unsigned.contract.digest()
    other_container = f"contracts-{uuid.uuid4().hex[:8]}"
    store.ensure_container(other_container)
    store.upload_stream(other_container, f"{digest}/contract.json", io.BytesIO(unsigned.to_bytes()),
                        length=len(unsigned.to_bytes()))  # fmt: skip
    with pytest.raises(CvmAttestationRefused, match="research-lab"):
        client.submit(job(pool, contract={"container": other_container, "digest": digest}))
    # One byte of the contract changed (its purpose), its signatures kept: no party signed that, and it is
    # not the contract the job names.
    changed = json.loads(pool.contract.to_bytes())
    changed["contract"]["purpose"] = changed["contract"]["purpose"].replace("one", "ome", 1)
    body = json.dumps(changed).encode()
    store.upload_stream(other_container, f"{pool.digest}/contract.json", io.BytesIO(body), length=len(body), overwrite=True)
    with pytest.raises(CvmAttestationRefused, match="holds contract"):
        client.submit(job(pool, contract={"container": other_container, "digest": pool.digest}))
    changed_digest = SignedContract.from_bytes(body).contract.digest()
    store.upload_stream(other_container, f"{changed_digest}/contract.json", io.BytesIO(body), length=len(body))
    with pytest.raises(CvmAttestationRefused, match="signature"):
        client.submit(job(pool, contract={"container": other_container, "digest": changed_digest}))


def test_without_the_contract_claim_no_owner_key_is_released(local_stack, pool) -> None:
    with in_the_tee(local_stack) as (settings, evidence):
        tee_attester, releaser = attester(settings, evidence), key_releaser(settings)
        for contract in (None, "ab" * 32):  # no contract enforced, or another one
            key = TeeKey()
            token = tee_attester.attest(key, secrets.token_urlsafe(24), contract=contract)
            for owner in (FIRST_OWNER, SECOND_OWNER):
                with pytest.raises(KeyReleaseDenied, match=r"x-ms-runtime\.contract"):
                    releaser.release_version(pool.kek_id(owner), token, key)
        # The same workload enforcing the contract gets each owner's key.
        key = TeeKey()
        token = tee_attester.attest(key, secrets.token_urlsafe(24), contract=pool.digest)
        for owner in (FIRST_OWNER, SECOND_OWNER):
            assert releaser.release_version(pool.kek_id(owner), token, key).kek_id == pool.kek_id(owner)


def running(client: CvmClient, spec: dict[str, Any]) -> str:
    """Submit ``spec`` and return its job id once its first epoch ended."""
    job_id = client.submit(spec).job_id
    deadline = time.monotonic() + 180
    while (view := client.job(job_id)).epoch < 1:
        assert not view.state.finished and time.monotonic() < deadline, view.error
        time.sleep(0.02)
    return job_id


LONG = {"hyperparameters": {"epochs": 20, "batch_size": 16, "learning_rate": 0.01, "seed": 7}}


def test_a_revocation_stops_a_running_job_at_the_next_epoch_and_refuses_new_ones(
    local_stack, authority, store, client, tmp_path
) -> None:
    pool = form_consortium(local_stack.layout, authority)
    job_id = running(client, job(pool, **LONG))
    # Hospital B revokes from its own machine with its own key, and publishes the revocation beside the contract.
    contract_file, revocation = tmp_path / "contract.json", tmp_path / "revocation.jws"
    contract_file.write_bytes(pool.contract.to_bytes())
    key = str(signing_key_path(local_stack.layout, SECOND_OWNER))
    assert main(["contract", "revoke", str(contract_file), "--party", "hospital-b", "--key", key,
                 "--reason", "consent withdrawn", "--out", str(revocation)]) == 0  # fmt: skip
    assert main(["--settings", str(local_stack.settings_file("data-owner")), "contract", "publish", str(contract_file),
                 "--revocation", str(revocation)]) == 0  # fmt: skip
    view = finished(client, job_id)
    assert view.state is JobState.FAILED and view.error.code == "ContractWithdrawn"
    assert view.epoch < 20  # it stopped at an epoch boundary, not at the end
    [revoked] = [entry["details"] for entry in view.tee_log["entries"] if entry["kind"] == "contract_revoked"]
    assert revoked["party"] == "hospital-b" and revoked["contract"] == pool.digest and revoked["revoked_at"]
    epochs = [entry["details"]["epoch"] for entry in view.tee_log["entries"] if entry["kind"] == "checkpoint_sealed"]
    assert epochs == list(range(1, view.epoch + 1))  # nothing trained after the revocation was seen
    with pytest.raises(CvmAttestationRefused, match="'hospital-b' revoked"):
        client.submit(job(pool))


def test_an_owner_disabling_its_key_stops_a_running_job_at_the_next_epoch(local_stack, authority, store, client) -> None:
    pool = form_consortium(local_stack.layout, authority)
    job_id = running(client, job(pool, **LONG))
    kek = KeyVaultKeyIdentifier(pool.kek_id(SECOND_OWNER))
    with key_client_from_settings(local_stack.settings("data-owner")) as vault:
        vault.update_key_properties(kek.name, kek.version, enabled=False)
    view = finished(client, job_id)
    assert view.state is JobState.FAILED and view.error.code == "ContractWithdrawn"
    [withdrawn] = [entry["details"] for entry in view.tee_log["entries"] if entry["kind"] == "contract_revoked"]
    assert withdrawn["kek_id"] == pool.kek_id(SECOND_OWNER) and "disabled" in withdrawn["refusal"]


def test_dp_runs_spend_the_accountants_epsilon_and_the_budget_refuses_once_spent(
    local_stack, authority, store, client, tmp_path, capsys
) -> None:
    terms = json.loads(consortia.TERMS_FILE.read_text())
    for dataset in terms["datasets"]:
        dataset["privacy"] |= {"epsilon_per_run": 3.0, "epsilon_total": 5.0}
    pool = form_consortium(local_stack.layout, authority, terms=terms)
    first = finished(client, client.submit(job(pool, privacy={"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0})).job_id)
    assert first.state is JobState.SUCCEEDED, first.error
    spent = first.result.privacy.epsilon
    assert 2.9 < spent <= 3.0

    with in_the_tee(local_stack) as (settings, evidence):
        tee_attester = attester(settings, evidence)
        ledger = read_ledger(open_ledger(store, pool.digest), pool.digest, lambda raw: tee_attester.historical(raw).claims)
    assert ledger.counted() == {"breast-cancer-a": spent, "breast-cancer-b": spent}
    with pytest.raises(CvmRequestRejected) as refused:  # 5 - 2.99… left, 3 asked
        client.submit(job(pool, privacy={"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0}))
    assert refused.value.term == "privacy[breast-cancer-a].epsilon_total"
    # Any party reads the same account, each entry verified against the contract's own release policy.
    contract_file = tmp_path / "contract.json"
    contract_file.write_bytes(pool.contract.to_bytes())
    assert main(["--settings", str(local_stack.settings_file()), "contract", "budget", str(contract_file)]) == 0
    table = capsys.readouterr().out
    [row] = [line.split() for line in table.splitlines() if line.startswith("breast-cancer-b ")]
    assert float(row[1]) == 5.0 and float(row[2]) == pytest.approx(spent) and float(row[4]) == pytest.approx(5.0 - spent)


def _export(client: CvmClient, local_stack, view: JobView, spec: dict[str, Any], recipient_pem: str) -> bytes:
    """Ask the TEE to re-seal the job's model for ``recipient_pem``, with hospital-a's approval for that key."""
    recipient = recipient_key(recipient_pem.encode())
    approval = approve_export(signing_key(local_stack.layout, FIRST_OWNER), kek_id=spec["kek_id"],
                              recipient_thumbprint=recipient.thumbprint,
                              expires_at=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))  # fmt: skip
    return client.export_model(
        kek_id=spec["kek_id"], run_id=spec["run_id"], container=view.result.model.container, blob=view.result.model.blob,
        sealed_sha256=view.result.provenance.statement["sealed_model_sha256"], recipient_public_key_pem=recipient_pem,
        nonce=secrets.token_urlsafe(24), approval=approval,
    )  # fmt: skip


def _rsa_public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_a_model_trained_under_a_contract_is_exported_only_as_the_contract_allows(local_stack, authority, store, client) -> None:
    lab = consortia.consumer_recipient_key(local_stack.layout).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()  # fmt: skip
    # The example contract allows no export: an owner's approval does not override it.
    pool = form_consortium(local_stack.layout, authority)
    spec = job(pool)
    view = finished(client, client.submit(spec).job_id)
    assert view.state is JobState.SUCCEEDED, view.error
    with pytest.raises(CvmAccessDenied, match="does not allow exports"):
        _export(client, local_stack, view, spec, lab)
    # A contract that allows exports lets the model go to the recipients it names, and to no other key.
    terms = json.loads(consortia.TERMS_FILE.read_text())
    terms["outputs"]["export_allowed"] = True
    pool = form_consortium(local_stack.layout, authority, terms=terms)
    spec = job(pool)
    view = finished(client, client.submit(spec).job_id)
    assert view.state is JobState.SUCCEEDED, view.error
    with pytest.raises(CvmAccessDenied, match="is not one contract"):
        _export(client, local_stack, view, spec, _rsa_public_pem())
    exported = _export(client, local_stack, view, spec, lab)
    reader = SealedReader(io.BytesIO(exported), KekPrivateKey(consortia.consumer_recipient_key(local_stack.layout)))
    assert safetensors.torch.load(b"".join(bytes(segment) for segment in reader.segments()))
