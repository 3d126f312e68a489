"""The training contract as a document: the example proposed and read back, its digest, the rules across fields."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from securetrain.core.governance.contract import ContractInvalid, SigningKey, TrainingContract
from securetrain.core.governance.proposal import propose
from securetrain.core.governance.signatures import SignedContract
from tests.contract_parties import EXPIRES, NOT_BEFORE, WORKLOAD, Consortium, consumer_public_pem, kek_of, terms


@pytest.fixture(scope="module")
def consortium() -> Consortium:
    return Consortium()


@pytest.fixture(scope="module")
def document(consortium: Consortium) -> dict[str, Any]:
    return consortium.proposal().contract.to_json()


def test_the_example_terms_propose_a_contract_that_reads_back_the_same(consortium: Consortium) -> None:
    proposal = consortium.proposal()
    assert proposal.signatures == ()
    back = SignedContract.from_bytes(proposal.to_bytes())
    assert back == proposal
    assert back.contract.digest() == proposal.contract.digest()
    contract = back.contract
    assert [party.id for party in contract.parties] == ["hospital-a", "hospital-b", "research-lab"]
    assert contract.dataset("breast-cancer-b").privacy.epsilon_total == 8.0
    assert contract.validity.not_before == "2026-05-01T00:00:00Z"
    assert contract.parties[0].signing_key == SigningKey.of(consortium.keys["hospital-a"])


def test_the_digest_is_of_the_terms_not_of_their_spelling(document: dict[str, Any]) -> None:
    contract = TrainingContract.from_json(document)
    # Another key order and the workload's sets in another order: the same terms, so the same contract.
    shuffled = json.loads(json.dumps(document, sort_keys=True)[::1])
    shuffled["workloads"][0]["launch_measurements"].reverse()
    shuffled = dict(reversed(list(shuffled.items())))
    assert TrainingContract.from_json(shuffled).digest() == contract.digest()
    changed = copy.deepcopy(document)
    changed["datasets"][0]["privacy"]["epsilon_total"] = 8.5
    assert TrainingContract.from_json(changed).digest() != contract.digest()


def _set(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    holder = changed
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = value
    return changed


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("schema",), "securetrain.contract/v2", "schema"),
        (("contract_id",), "Not A Slug", "contract_id"),
        (("purpose",), "x" * 2001, "purpose"),
        (("purpose",), "bell\x07", "purpose"),
        (("parties", 1, "id"), "hospital-a", "parties[1].id"),
        (("parties", 2, "role"), "data-owner", "parties"),
        (("parties", 0, "role"), "model-consumer", "datasets[0].owner"),
        (("parties", 0, "signing_key", "x"), "A" * 42 + "=", "parties[0].signing_key.x"),
        (("parties", 0, "signing_key", "crv"), "X25519", "parties[0].signing_key.crv"),
        (("datasets", 0, "owner"), "research-lab", "datasets[0].owner"),
        (("datasets", 0, "owner"), "nobody", "datasets[0].owner"),
        (("datasets", 1, "dataset_id"), "breast-cancer-a", "datasets[1].dataset_id"),
        (("datasets", 0, "versions", 0, "version"), "latest", "datasets[0].versions[0].version"),
        (("datasets", 0, "versions", 0, "manifest_sha256"), "AB" * 32, "datasets[0].versions[0].manifest_sha256"),
        (("datasets", 0, "kek"), "http://vault.test/keys/kek", "datasets[0].kek"),
        (("datasets", 0, "privacy", "epsilon_per_run"), 9.0, "datasets[0].privacy.epsilon_per_run"),
        (("datasets", 0, "privacy", "delta"), 1, "datasets[0].privacy.delta"),
        (("datasets", 0, "privacy", "accountants"), ["gdp"], "datasets[0].privacy.accountants[0]"),
        (("datasets", 0, "privacy", "accountants"), ["prv", "prv"], "datasets[0].privacy.accountants"),
        (("workloads", 0, "host_data"), ["zz"], "workloads[0].host_data[0]"),
        (("workloads", 0, "platform"), ["snp"], "workloads[0].platform"),
        (("job_space", "models", 0, "params", "hidden"), {"min": 5, "max": 4}, "job_space.models[0].params.hidden.max"),
        (("job_space", "models", 0, "params", "hidden"), {"one_of": [1, 1.0]}, "job_space.models[0].params.hidden.one_of"),
        (("job_space", "batch_size"), {"min": 64, "max": 32}, "job_space.batch_size.max"),
        (("job_space", "optimizers"), ["adamw"], "job_space.optimizers[0]"),
        (("job_space", "expectation_types"), ["expect_column_values_to_match_regex"], "job_space.expectation_types[0]"),
        (("outputs", "recipients", 0, "party"), "hospital-a", "outputs.recipients[0].party"),
        (("outputs", "recipients", 0, "public_key"), "not a key", "outputs.recipients[0].public_key"),
        (("validity", "expires"), "2026-05-01T00:00:00Z", "validity.expires"),
        (("validity", "expires"), "2026-13-01T00:00:00Z", "validity.expires"),
        (("validity", "expires"), "2026-12-01T00:00:00+00:00", "validity.expires"),
        (("metadata",), {}, "metadata"),
    ],
)
def test_a_broken_rule_names_its_field(document: dict[str, Any], path: tuple[Any, ...], value: Any, field: str) -> None:
    with pytest.raises(ContractInvalid) as caught:
        TrainingContract.from_json(_set(document, path, value))
    assert caught.value.field == field


def test_two_parties_with_one_key_are_refused(document: dict[str, Any]) -> None:
    with pytest.raises(ContractInvalid) as caught:
        TrainingContract.from_json(_set(document, ("parties", 1, "signing_key"), document["parties"][0]["signing_key"]))
    assert caught.value.field == "parties[1].signing_key"


def test_an_ed25519_model_key_is_refused(document: dict[str, Any], consortium: Consortium) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = consortium.keys["research-lab"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()  # fmt: skip
    with pytest.raises(ContractInvalid, match="RSA"):
        TrainingContract.from_json(_set(document, ("outputs", "recipients", 0, "public_key"), pem))


def test_propose_refuses_a_value_given_twice_and_a_party_the_terms_do_not_name(consortium: Consortium) -> None:
    with_kek = terms()
    with_kek["datasets"][0]["kek"] = kek_of("breast-cancer-a")
    with pytest.raises(ContractInvalid) as caught:
        propose(with_kek, keks={"breast-cancer-a": kek_of("breast-cancer-a")})
    assert caught.value.field == "datasets[0].kek"
    with pytest.raises(ContractInvalid, match="no id 'hospital-c'"):
        propose(terms(), party_keys={"hospital-c": consortium.keys["hospital-a"].public_key()})


def test_a_proposal_missing_what_the_terms_leave_out_names_it(consortium: Consortium) -> None:
    with pytest.raises(ContractInvalid) as caught:
        propose(terms(), party_keys={party: key.public_key() for party, key in consortium.keys.items()},
                recipient_keys={"research-lab": consumer_public_pem()}, workloads=[WORKLOAD],
                not_before=NOT_BEFORE, expires=EXPIRES)  # fmt: skip
    assert caught.value.field == "datasets[0].kek"
