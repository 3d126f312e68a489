"""The TEE's privacy-budget ledger in an append blob of the local stack's Azurite: reserve, settle, release;
a reservation with no room refused naming the dataset and nothing written; runs racing for the last of a
budget never overspend it; a restarted job reuses its reservation and a duplicate job is refused; an entry
forged into the blob stops the TEE from building on it; a ledger cut back is caught by check_holds."""

from __future__ import annotations

import secrets
import threading

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import ContainerClient

from securetrain.core.attestation.tokens import ValidatedToken
from securetrain.core.governance.budget import (
    BUDGET_CONTAINER,
    BudgetExhausted,
    BudgetRefused,
    LedgerInvalid,
    LedgerKind,
    LedgerRolledBack,
    check_holds,
    format_budget,
    ledger_store,
    read_ledger,
)
from securetrain.core.model_provenance import verify_attestation_token
from securetrain.core.storage import BlobStore
from securetrain.tee.attest import TeeKey
from securetrain.tee.privacy_budget import PrivacyBudget, open_ledger
from tests.unit.test_model_provenance import authority, policy, tee_key, token  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

TOTALS = {"hospital-a": 8.0, "hospital-b": 8.0}
BOTH = {"hospital-a": 3.0, "hospital-b": 3.0}


@pytest.fixture(scope="module")
def blobs(local_stack):
    with BlobStore.from_settings(local_stack.settings()) as store:
        yield store


@pytest.fixture
def contract() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def check(authority, policy):
    return lambda raw: verify_attestation_token(raw, policy, lambda _: authority[1])


@pytest.fixture(scope="module")
def second_key() -> TeeKey:
    return TeeKey()


def attested(authority, key: TeeKey, check) -> ValidatedToken:
    raw = token(authority[0], key)
    return ValidatedToken(raw=raw, claims=check(raw), kid="signer")


def budget(blobs, contract, check, authority, key: TeeKey, job: str | None = None) -> PrivacyBudget:
    """One job's writer: its TEE key, the token attesting it, and its identity (its TEE log's entry 0)."""
    return PrivacyBudget(open_ledger(blobs, contract), contract, check, key=key, token=attested(authority, key, check),
                         job=job or secrets.token_hex(32))  # fmt: skip


def test_a_run_reserves_before_training_and_settles_what_it_spent(blobs, contract, check, authority, tee_key) -> None:
    writer = budget(blobs, contract, check, authority, tee_key)
    reserved = writer.reserve("run-1", BOTH, 1e-5, TOTALS)
    assert (reserved.seq, reserved.record.kind) == (0, "reserved")
    spent = writer.settle("run-1", {"hospital-a": 2.5, "hospital-b": 2.5}, 1e-5, "prv")
    assert (spent.seq, spent.prev) == (1, reserved.hash)
    writer.reserve("run-2", {"hospital-a": 1.0}, 1e-5, TOTALS)
    writer.reserve("run-3", {"hospital-b": 2.0}, 1e-5, TOTALS)
    writer.release("run-3", "the data failed validation before the first step")

    state = read_ledger(ledger_store(blobs, contract), contract, check)
    assert state.counted() == {"hospital-a": 3.5, "hospital-b": 2.5}
    assert state.runs["run-1"].status is LedgerKind.SPENT and state.runs["run-3"].status is LedgerKind.RELEASED
    check_holds(state, spent.reference())
    table = format_budget(state, TOTALS)
    assert "hospital-a  8         2.5      1           4.5" in table, table


def test_a_reservation_with_no_room_is_refused_naming_the_dataset_and_nothing_is_written(blobs, contract, check, authority, tee_key) -> None:
    writer = budget(blobs, contract, check, authority, tee_key)
    writer.reserve("run-1", {"hospital-a": 3.0, "hospital-b": 7.5}, 1e-5, TOTALS)
    with pytest.raises(BudgetExhausted, match="'hospital-b' has ε 0.5 left, the run asks for ε 3"):
        writer.reserve("run-2", BOTH, 1e-5, TOTALS)
    with pytest.raises(BudgetRefused, match="no privacy budget for dataset 'hospital-c'"):
        writer.reserve("run-3", {"hospital-c": 1.0}, 1e-5, TOTALS)
    assert len(ledger_store(blobs, contract).read_all().lines) == 1


def test_runs_racing_for_the_last_of_a_budget_never_spend_more_than_it_has(blobs, contract, check, authority, tee_key, second_key) -> None:
    # Eight jobs on two TEE keys, each asking for ε 3 of a budget of 8: two fit, and only two may reserve.
    writers = [budget(blobs, contract, check, authority, (tee_key, second_key)[i % 2]) for i in range(8)]
    start = threading.Barrier(len(writers))
    outcomes: list[object] = [None] * len(writers)

    def race(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = writers[i].reserve(f"run-{i}", BOTH, 1e-5, TOTALS)
        except BudgetExhausted as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(outcome, BudgetExhausted) for outcome in outcomes) == 6, outcomes
    state = read_ledger(ledger_store(blobs, contract), contract, check)
    assert state.next_seq == 2 and state.counted() == {"hospital-a": 6.0, "hospital-b": 6.0}


def test_a_restarted_job_reuses_its_reservation_and_a_duplicate_job_is_refused(blobs, contract, check, authority, tee_key, second_key) -> None:
    job = secrets.token_hex(32)
    first = budget(blobs, contract, check, authority, tee_key, job).reserve("run-1", BOTH, 1e-5, TOTALS)
    # The job restarts: a new TEE key and token, the same job (it continues its TEE log).
    restarted = budget(blobs, contract, check, authority, second_key, job)
    assert restarted.reserve("run-1", BOTH, 1e-5, TOTALS) == first
    with pytest.raises(BudgetRefused, match="reserved ε .* not ε"):
        restarted.reserve("run-1", {"hospital-a": 5.0}, 1e-5, TOTALS)
    # The same run id submitted again as another job: it would train a second time on one reservation.
    duplicate = budget(blobs, contract, check, authority, tee_key)
    with pytest.raises(BudgetRefused, match="run 'run-1' reserved its privacy budget in another job"):
        duplicate.reserve("run-1", BOTH, 1e-5, TOTALS)
    with pytest.raises(BudgetRefused, match="in another job"):
        duplicate.settle("run-1", BOTH, 1e-5, "prv")

    spent = restarted.settle("run-1", {"hospital-a": 2.9, "hospital-b": 2.9}, 1e-5, "rdp")
    assert restarted.settle("run-1", {"hospital-a": 2.9, "hospital-b": 2.9}, 1e-5, "rdp") == spent  # settled once
    with pytest.raises(BudgetRefused, match="already settled its privacy budget otherwise"):
        restarted.release("run-1", "too late")
    with pytest.raises(BudgetRefused, match="already settled"):
        restarted.reserve("run-1", BOTH, 1e-5, TOTALS)
    with pytest.raises(BudgetRefused, match="reserved no privacy budget"):
        restarted.settle("run-2", BOTH, 1e-5, "prv")
    assert len(ledger_store(blobs, contract).read_all().lines) == 2


@pytest.fixture
def raw_container(local_stack):
    """The ledger container through the SDK itself: what someone holding the account key can do."""
    env = local_stack.env
    with ContainerClient(
        env["SECURETRAIN_BLOB_ENDPOINT"], BUDGET_CONTAINER,
        credential=AzureNamedKeyCredential(env["SECURETRAIN_BLOB_ACCOUNT_NAME"], env["SECURETRAIN_BLOB_ACCOUNT_KEY"]),
        connection_verify=env["SECURETRAIN_CA_BUNDLE"],
    ) as client:  # fmt: skip
        yield client


def test_an_entry_forged_into_the_blob_stops_the_tee_and_a_cut_back_ledger_fails_check_holds(
    blobs, contract, check, authority, tee_key, raw_container
) -> None:
    writer = budget(blobs, contract, check, authority, tee_key)
    writer.reserve("run-1", BOTH, 1e-5, TOTALS)
    spent = writer.settle("run-1", BOTH, 1e-5, "prv")
    blob = raw_container.get_blob_client(f"{contract}.jsonl")
    stored = blob.download_blob().readall()

    # Cut back to before the `spent` entry: the ledger verifies on its own; the reference the run's statements
    # carry does not hold.
    first_line = stored.split(b"\n")[0] + b"\n"
    blob.create_append_blob()
    blob.append_block(first_line)
    state = read_ledger(ledger_store(blobs, contract), contract, check)
    with pytest.raises(LedgerRolledBack, match="cut back"):
        check_holds(state, spent.reference())

    # A `released` forged without the TEE's key (the reservation's signature copied onto it): the next run's
    # TEE refuses to count on, or append to, that ledger.
    forged = first_line.replace(b'"kind":"reserved"', b'"kind":"released"')
    blob.append_block(forged)
    with pytest.raises(LedgerInvalid, match="ledger entry 1|entry 1 of the ledger"):
        writer.reserve("run-2", BOTH, 1e-5, TOTALS)
    assert blob.download_blob().readall() == first_line + forged
