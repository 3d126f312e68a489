"""check_job: a job inside the example contract's terms passes; each term it breaks is refused by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.contracts.job_spec import DatasetRef
from securetrain.core.governance.contract import TrainingContract
from securetrain.core.governance.terms import ContractViolation, check_job
from securetrain.core.onboarding import DatasetManifest
from tests.contract_parties import Consortium, job, kek_of

Manifests = list[tuple[DatasetRef, DatasetManifest]]


@pytest.fixture(scope="module")
def consortium() -> Consortium:
    return Consortium()


@pytest.fixture(scope="module")
def contract(consortium: Consortium) -> TrainingContract:
    return consortium.proposal().contract


def test_a_job_inside_the_terms_passes(consortium: Consortium, contract: TrainingContract) -> None:
    check_job(contract, job(), consortium.refs(), spent={"breast-cancer-a": 5.0})
    check_job(contract, job(model={"name": "mlp", "params": {}}, expectation_suite=None), consortium.refs(), spent={})


def _replace_manifest(consortium: Consortium, dataset_id: str, change: Callable[[DatasetManifest], DatasetManifest]) -> Manifests:
    return [(ref, change(manifest) if manifest.dataset_id == dataset_id else manifest) for ref, manifest in consortium.refs()]


def _resigned(consortium: Consortium, owner: str, **fields: Any) -> Callable[[DatasetManifest], DatasetManifest]:
    def change(manifest: DatasetManifest) -> DatasetManifest:
        document = {**manifest.to_json(), **fields, "signatures": []}
        return DatasetManifest.from_json(document).signed(consortium.keys[owner])

    return change


def _unsigned_by(key: Ed25519PrivateKey) -> Callable[[DatasetManifest], DatasetManifest]:
    def change(manifest: DatasetManifest) -> DatasetManifest:
        return DatasetManifest.from_json({**manifest.to_json(), "signatures": []}).signed(key)

    return change


# (term, job changes, manifests change, spent)
CASES: list[tuple[str, dict[str, Any], Callable[[Consortium], Manifests] | None, dict[str, float]]] = [
    ("datasets", {}, lambda c: _replace_manifest(c, "breast-cancer-a", _resigned(c, "hospital-a", dataset_id="lung-x")), {}),
    ("datasets", {}, lambda c: c.refs()[:1], {}),
    ("datasets", {"kek_id": "https://vault.securetrain.test/keys/airflows-own-key/01"}, None, {}),
    ("datasets[breast-cancer-a].version", {},
     lambda c: _replace_manifest(c, "breast-cancer-a", _resigned(c, "hospital-a", version="v2")), {}),
    ("datasets[breast-cancer-b].manifest", {},
     lambda c: _replace_manifest(c, "breast-cancer-b", _resigned(c, "hospital-b", created_at="2026-04-02T00:00:00Z")), {}),
    ("datasets[breast-cancer-b].owner", {},
     lambda c: _replace_manifest(c, "breast-cancer-b", _unsigned_by(c.keys["hospital-a"])), {}),
    ("job_space.models", {"model": {"name": "cnn", "params": {}}}, None, {}),
    ("job_space.models[mlp].params.hidden", {"model": {"name": "mlp", "params": {"hidden": [32, 512]}}}, None, {}),
    ("job_space.models[mlp].params.hidden", {"model": {"name": "mlp", "params": {"hidden": True}}}, None, {}),
    ("job_space.models[mlp].params.dropout", {"model": {"name": "mlp", "params": {"dropout": 0.9}}}, None, {}),
    ("job_space.models[mlp].params.activation", {"model": {"name": "mlp", "params": {"activation": "relu"}}}, None, {}),
    ("job_space.max_epochs", {"hyperparameters": {"epochs": 21}}, None, {}),
    ("job_space.batch_size", {"hyperparameters": {"batch_size": 8}}, None, {}),
    ("job_space.batch_size", {"hyperparameters": {"batch_size": 512}}, None, {}),
    ("job_space.learning_rate", {"hyperparameters": {"learning_rate": 0.5}}, None, {}),
    ("job_space.expectation_types", {"expectation_suite": {"name": "bc", "expectations": [
        {"type": "expect_column_median_to_be_between", "kwargs": {"column": "target", "min_value": 0}}]}}, None, {}),
    ("privacy[breast-cancer-a].required", {"privacy": None}, None, {}),
    ("privacy[breast-cancer-a].accountant", {"privacy": {"accountant": "rdp"}}, None, {}),
    ("privacy[breast-cancer-a].delta", {"privacy": {"delta": 1e-4}}, None, {}),
    ("privacy[breast-cancer-a].max_grad_norm", {"privacy": {"max_grad_norm": 2.0}}, None, {}),
    ("privacy[breast-cancer-a].epsilon_per_run", {"privacy": {"epsilon": 3.5}}, None, {}),
    ("privacy[breast-cancer-b].epsilon_total", {}, None, {"breast-cancer-b": 6.5}),
    ("privacy[breast-cancer-a].epsilon_total", {}, None, {"breast-cancer-a": float("nan")}),
]  # fmt: skip


@pytest.mark.parametrize("term, changes, manifests, spent", CASES)
def test_each_broken_term_is_refused_by_name(
    consortium: Consortium, contract: TrainingContract, term: str, changes: dict[str, Any],
    manifests: Callable[[Consortium], Manifests] | None, spent: dict[str, float],
) -> None:  # fmt: skip
    spec = job(**changes)
    if term == "privacy[breast-cancer-a].accountant":
        contract = _narrowed_accountants(contract)
    with pytest.raises(ContractViolation) as caught:
        check_job(contract, spec, manifests(consortium) if manifests else consortium.refs(), spent=spent)
    assert caught.value.term == term, str(caught.value)
    assert term in str(caught.value)


def _narrowed_accountants(contract: TrainingContract) -> TrainingContract:
    document = contract.to_json()
    for dataset in document["datasets"]:
        dataset["privacy"]["accountants"] = ["prv"]
    return TrainingContract.from_json(document)


def test_an_optimizer_outside_the_terms_is_refused(contract: TrainingContract, consortium: Consortium) -> None:
    document = contract.to_json()
    document["job_space"]["optimizers"] = ["adam"]
    with pytest.raises(ContractViolation) as caught:
        check_job(TrainingContract.from_json(document), job(hyperparameters={"optimizer": "sgd"}), consortium.refs(),
                  spent={})  # fmt: skip
    assert caught.value.term == "job_space.optimizers"


def test_a_one_of_parameter_compares_as_json(contract: TrainingContract, consortium: Consortium) -> None:
    document = contract.to_json()
    document["job_space"]["models"][0]["params"]["hidden"] = {"one_of": [[32, 16], [64]]}
    narrowed = TrainingContract.from_json(document)
    check_job(narrowed, job(model={"name": "mlp", "params": {"hidden": [32.0, 16]}}), consortium.refs(), spent={})
    with pytest.raises(ContractViolation, match="is not one of"):
        check_job(narrowed, job(model={"name": "mlp", "params": {"hidden": [16, 32]}}), consortium.refs(), spent={})


def test_the_budget_left_is_the_total_less_what_was_spent(contract: TrainingContract, consortium: Consortium) -> None:
    check_job(contract, job(privacy={"epsilon": 3.0}), consortium.refs(), spent={"breast-cancer-a": 5.0})
    with pytest.raises(ContractViolation, match=r"0\.5 of 8; 7\.5 spent"):
        check_job(contract, job(privacy={"epsilon": 1.0}), consortium.refs(), spent={"breast-cancer-a": 7.5})


def test_a_manifest_sealed_to_another_kek_than_the_contracts_is_refused(contract: TrainingContract,
                                                                        consortium: Consortium) -> None:  # fmt: skip
    document = contract.to_json()
    document["datasets"][0]["kek"] = "https://vault.securetrain.test/keys/another-key"
    with pytest.raises(ContractViolation) as caught:
        check_job(TrainingContract.from_json(document), job(), consortium.refs(), spent={})
    assert caught.value.term == "datasets[breast-cancer-a].kek"


def test_a_contract_kek_with_a_version_still_matches_a_rotated_manifest(contract: TrainingContract,
                                                                       consortium: Consortium) -> None:  # fmt: skip
    document = contract.to_json()
    document["datasets"][0]["kek"] = f"{kek_of('breast-cancer-a')}/fedcba9876543210"
    check_job(TrainingContract.from_json(document), job(), consortium.refs(), spent={})
