"""The privacy-budget ledger, offline: a ledger TEEs wrote verifies and counts ε per dataset (spent when
settled, reserved while open, nothing when released); a reservation with no room is refused naming the
dataset; every edit someone without the TEE's key can make (a changed ε, a forged or unattested entry, a
removed, reordered or copied entry) is refused naming the entry; a ledger cut back verifies on its own, and
check_holds catches it. The attestation authority is a local key with its JWKS, as in test_model_provenance."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securetrain.core.audit.chain import GENESIS_PREV
from securetrain.core.governance.budget import (
    BudgetExhausted,
    BudgetRefused,
    LedgerEntry,
    LedgerInvalid,
    LedgerKind,
    LedgerRolledBack,
    Released,
    Reserved,
    Spent,
    check_holds,
    format_budget,
    verify_ledger,
)
from securetrain.core.model_provenance import verify_attestation_token
from securetrain.tee.attest import TeeKey
from tests.unit.test_model_provenance import authority, policy, tee_key, token  # noqa: F401 - fixtures

CONTRACT = "c0" * 32
JOB = "1b" * 32
TIME = "2026-05-01T12:00:00.000000Z"


@pytest.fixture
def check(authority, policy):
    return lambda raw: verify_attestation_token(raw, policy, lambda _: authority[1])


@pytest.fixture(scope="module")
def raw_token(authority, tee_key) -> str:
    return token(authority[0], tee_key)


def reserved(run: str, raw: str, job: str = JOB, delta: float = 1e-5, **epsilon: float) -> Reserved:
    return Reserved(contract=CONTRACT, run_id=run, job=job, time=TIME, token=raw, epsilon=epsilon, delta=delta)


def spent(run: str, raw: str, job: str = JOB, **epsilon: float) -> Spent:
    return Spent(contract=CONTRACT, run_id=run, job=job, time=TIME, token=raw, epsilon=epsilon, delta=1e-5, accountant="prv")


def released(run: str, raw: str, job: str = JOB) -> Released:
    return Released(contract=CONTRACT, run_id=run, job=job, time=TIME, token=raw, reason="refused before training")


def write(records: list[Any], key: TeeKey, lines: list[bytes] | None = None) -> list[bytes]:
    """The lines of a ledger as TEEs append them: each entry linked to the one before and signed."""
    lines = list(lines or [])
    for record in records:
        prev = LedgerEntry.model_validate(json.loads(lines[-1])).hash if lines else GENESIS_PREV
        lines.append(LedgerEntry.sign(record, seq=len(lines), prev=prev, key=key.private_key, kid=key.kid).line)
    return lines


@pytest.fixture(scope="module")
def lines(tee_key, raw_token) -> list[bytes]:
    """r1 reserved and spent on a and b; r2 reserved on a, still open; r3 reserved on a, then released."""
    return write([
        reserved("r1", raw_token, a=1.0, b=1.0), reserved("r2", raw_token, a=2.0), spent("r1", raw_token, a=0.8, b=0.75),
        reserved("r3", raw_token, a=3.0), released("r3", raw_token),
    ], tee_key)  # fmt: skip


def test_a_ledger_the_tee_wrote_verifies_and_counts_spent_open_and_released_runs(lines, check) -> None:
    state = verify_ledger(lines, CONTRACT, check)
    assert state.next_seq == 5 and state.head_hash == LedgerEntry.model_validate(json.loads(lines[-1])).hash
    assert {run: account.status for run, account in state.runs.items()} == {
        "r1": LedgerKind.SPENT, "r2": LedgerKind.RESERVED, "r3": LedgerKind.RELEASED,
    }  # fmt: skip
    # r1 counts what it spent, r2 (open: it may have crashed mid-run) all it reserved, r3 nothing.
    assert state.counted() == {"a": 2.8, "b": 0.75}
    assert state.remaining("a", 8.0) == 5.2 and state.remaining("b", 1.0) == 0.25
    state.check_room({"a": 5.2, "b": 0.25}, {"a": 8.0, "b": 1.0})  # exactly what is left fits
    table = format_budget(state, {"a": 8.0, "b": 1.0})
    assert "a        8         0.8      2           5.2" in table and "r3: released (entry 4)" in table


def test_an_empty_ledger_verifies_with_the_whole_budget_left(check) -> None:
    state = verify_ledger([], CONTRACT, check)
    assert (state.next_seq, state.head_hash, state.counted(), state.remaining("a", 8.0)) == (0, GENESIS_PREV, {}, 8.0)


def test_a_reservation_beyond_what_is_left_is_refused_naming_the_dataset(lines, check) -> None:
    state = verify_ledger(lines, CONTRACT, check)
    with pytest.raises(BudgetExhausted, match="dataset 'b' has ε 0.25 left, the run asks for ε 0.5") as refused:
        state.check_room({"a": 1.0, "b": 0.5}, {"a": 8.0, "b": 1.0})
    assert (refused.value.dataset, refused.value.asked, refused.value.left) == ("b", 0.5, 0.25)
    with pytest.raises(BudgetRefused, match="no privacy budget for dataset 'c'"):
        state.check_room({"c": 0.1}, {"a": 8.0, "b": 1.0})


def test_epsilon_is_counted_in_decimal_so_a_run_that_fits_exactly_is_not_refused(tee_key, raw_token, check) -> None:
    ledger = write([reserved("r1", raw_token, a=0.1), reserved("r2", raw_token, a=0.2)], tee_key)
    state = verify_ledger(ledger, CONTRACT, check)
    state.check_room({"a": 0.7}, {"a": 1.0})  # 0.1 + 0.2 + 0.7 is 1.0, though not in binary floating point
    with pytest.raises(BudgetExhausted):
        state.check_room({"a": 0.7000001}, {"a": 1.0})


def _edit(lines: list[bytes], seq: int, change) -> list[bytes]:
    """An edit made without the TEE's key: the JSON changed and written back canonically, signature as it was."""
    document = json.loads(lines[seq])
    change(document)
    return [*lines[:seq], rfc8785.dumps(document), *lines[seq + 1:]]


@pytest.mark.parametrize(
    ("tamper", "seq", "message"),
    [
        (lambda ls: _edit(ls, 2, lambda d: d["record"]["epsilon"].update(a=0.1)), 2, "signature over ledger entry 2 does not verify"),
        (lambda ls: _edit(ls, 1, lambda d: d["record"].update(run_id="r9")), 1, "signature over ledger entry 1 does not verify"),
        (lambda ls: _edit(ls, 4, lambda d: d["record"].update(kind="spent", epsilon={"a": 0.0}, delta=1e-5, accountant="prv") or d["record"].pop("reason")),
         4, "signature over ledger entry 4 does not verify"),
        (lambda ls: [*ls[:1], *ls[2:]], 1, "claims seq 2: entries 1-1 were removed"),
        (lambda ls: [ls[1], ls[0], *ls[2:]], 0, "claims seq 1"),
        (lambda ls: [*ls, ls[0]], 5, "claims seq 0: an entry was inserted"),
        (lambda ls: [*ls[:3], ls[3].replace(b'"seq":3', b'"seq": 3'), *ls[4:]], 3, "not in canonical RFC 8785 form"),
        (lambda ls: [*ls[:3], b"not json", *ls[4:]], 3, "entry 3 of the ledger is not JSON"),
        (lambda ls: [*ls[:3], ls[3].replace(b'"seq":3', b'"seq":36893488147419103232'), *ls[4:]], 3, "not in canonical"),
        (lambda ls: [*ls[:4], ls[4].replace(b'"reason":"', b'"reason":"\\ud800'), *ls[5:]], 4, "entry 4 of the ledger is malformed"),
        (lambda ls: _edit(ls, 2, lambda d: d["record"].update(epsilon={"a": -1.0})), 2, "record.spent.epsilon.a"),
        (lambda ls: _edit(ls, 1, lambda d: d.update(prev="00" * 32)), 1, "does not link to entry 0"),
        (lambda ls: _edit(ls, 0, lambda d: d["record"].update(contract="ee" * 32)), 0, "is for contract eeee"),
    ],
    ids=["edited-epsilon", "edited-run", "released-turned-spent", "removed", "reordered", "replayed", "not-canonical",
         "not-json", "huge-seq", "lone-surrogate", "malformed", "relinked", "other-contract"],
)  # fmt: skip
def test_an_entry_changed_removed_reordered_or_inserted_is_refused_naming_it(lines, check, tamper, seq, message) -> None:
    with pytest.raises(LedgerInvalid, match=message) as refused:
        verify_ledger(tamper(lines), CONTRACT, check)
    assert refused.value.seq == seq


def test_any_byte_changed_in_any_entry_is_refused_naming_that_entry(lines, check) -> None:
    rng = random.Random(14)
    for seq, line in enumerate(lines):
        for _ in range(12):
            at = rng.randrange(len(line))
            changed = bytearray(line)
            changed[at] = rng.choice([b for b in b'0123456789abcdef"{}:,xyz.-' if b != line[at]])
            with pytest.raises(LedgerInvalid) as refused:
                verify_ledger([*lines[:seq], bytes(changed), *lines[seq + 1:]], CONTRACT, check)
            assert refused.value.seq == seq, (seq, at, refused.value)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | _JSON.map(lambda value: json.dumps(value).encode()) | st.fixed_dictionaries(
    {"prev": st.just(GENESIS_PREV), "record": _JSON, "schema": st.just("securetrain.privacy-budget-entry/v1"),
     "seq": st.just(0), "signature": _JSON}).map(lambda value: json.dumps(value).encode()))  # fmt: skip
def test_only_ledger_invalid_escapes_verifying_any_line(check, line: bytes) -> None:
    with pytest.raises(LedgerInvalid) as refused:
        verify_ledger([line], CONTRACT, check)
    assert refused.value.seq == 0


def test_an_entry_signed_by_a_key_no_approved_tee_holds_is_refused(lines, authority, tee_key, raw_token, check) -> None:
    outsider = TeeKey()
    # A `released` that would free r2's reservation, signed by a key the ledger's own token does not attest.
    with pytest.raises(LedgerInvalid, match="signed by key .* not the key .* its token attests") as refused:
        verify_ledger(write([released("r2", raw_token)], outsider, lines), CONTRACT, check)
    assert refused.value.seq == 5
    # The same with a token for the outsider's key from an authority nobody trusts.
    other_authority = TeeKey().private_key
    forged = write([released("r2", token(other_authority, outsider))], outsider, lines)
    with pytest.raises(LedgerInvalid, match="attestation token of ledger entry 5 does not verify"):
        verify_ledger(forged, CONTRACT, check)
    # And with a genuine token of a TEE that is not approved (another measurement).
    unapproved = write([released("r2", token(authority[0], outsider, **{"x-ms-sevsnpvm-launchmeasurement": "ee" * 48}))], outsider, lines)
    with pytest.raises(LedgerInvalid, match="entry 5 does not verify: .*release policy"):
        verify_ledger(unapproved, CONTRACT, check)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (lambda t: [spent("r1", t, a=1.0)], "settles run 'r1', which reserved nothing"),
        (lambda t: [reserved("r1", t, a=1.0), reserved("r1", t, a=1.0)], "reserves for run 'r1' again"),
        (lambda t: [reserved("r1", t, a=1.0), released("r1", t), spent("r1", t, a=1.0)], "settles run 'r1' again"),
        (lambda t: [reserved("r1", t, a=1.0), spent("r1", t, job="2c" * 32, a=1.0)], "from a job other than"),
        (lambda t: [reserved("r1", t, a=1.0), spent("r1", t, b=1.0)], "spends on datasets other than"),
    ],
    ids=["spent-unreserved", "reserved-twice", "settled-twice", "other-job", "other-datasets"],
)  # fmt: skip
def test_an_account_out_of_order_is_refused_even_when_signed(tee_key, raw_token, check, records, message) -> None:
    ledger = write(records(raw_token), tee_key)
    with pytest.raises(LedgerInvalid, match=message) as refused:
        verify_ledger(ledger, CONTRACT, check)
    assert refused.value.seq == len(ledger) - 1


def test_check_holds_catches_a_ledger_cut_back_or_rewritten_that_verifies_on_its_own(lines, tee_key, raw_token, check) -> None:
    state = verify_ledger(lines, CONTRACT, check)
    reference = state.entries[2].reference()  # r1's `spent`, as the run's statements carry it
    assert reference == {"contract": CONTRACT, "seq": 2, "head_hash": state.entries[2].hash}
    check_holds(state, reference)
    check_holds(verify_ledger([*lines, *write([reserved("r4", raw_token, a=1.0)], tee_key, lines)[5:]], CONTRACT, check), reference)

    cut_back = verify_ledger(lines[:2], CONTRACT, check)  # the spent entry gone: r1 counts its larger reservation...
    with pytest.raises(LedgerRolledBack, match="ends at entry 1, but a TEE signed its entry 2: it was cut back") as refused:
        check_holds(cut_back, reference)
    assert refused.value.seq == 2
    # ...or replayed by the TEE itself from an older copy: a second ledger grown from the cut-back one.
    rewritten = verify_ledger(write([released("r2", raw_token)], tee_key, lines[:2]), CONTRACT, check)
    with pytest.raises(LedgerRolledBack, match="entry 2 of the ledger of contract .* is not the one a TEE signed"):
        check_holds(rewritten, reference)
    with pytest.raises(LedgerRolledBack, match="malformed or names another contract"):
        check_holds(state, {**reference, "contract": "ee" * 32})
