"""The TEE's side of the privacy-budget ledger: reserve a run's ε before training, settle it when final.

Each write reads the contract's ledger, verifies it whole (:func:`~securetrain.core.governance.budget.verify_ledger`:
storage is untrusted, so a forged ``released`` entry must not free budget), decides, and appends one entry
signed with the job's attested TEE key at the position it read (``appendpos``). If another run appended in
between, storage answers 412 and the TEE reads, verifies and decides again: check and append are one atomic
step, so racing runs never spend more than a budget has. A restarted job finds its own reservation and
reuses it; another job of the same run id (a duplicate submission) is refused. Format and guarantees:
docs/audit.md ("Privacy-budget ledger").
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any

from securetrain.core.attestation.tokens import ValidatedToken
from securetrain.core.audit.errors import AuditAppendConflict, AuditStoreError
from securetrain.core.audit.events import rfc3339_utc
from securetrain.core.audit.log import MAX_APPEND_ATTEMPTS
from securetrain.core.audit.store import AppendBlobLines
from securetrain.core.audit.tee_log import TokenCheck
from securetrain.core.governance.budget import (
    BUDGET_CONTAINER,
    BudgetRefused,
    LedgerEntry,
    LedgerState,
    LedgerStore,
    Released,
    Reserved,
    Spent,
    ledger_store,
    verify_ledger,
)
from securetrain.core.storage import BlobStore
from securetrain.tee.attest import TeeKey

log = logging.getLogger(__name__)

#: What deciding on a verified ledger gives: the entry to append, or the entry already there.
_Decision = Reserved | Spent | Released | LedgerEntry


def open_ledger(blobs: BlobStore, contract_digest: str) -> AppendBlobLines:
    """The ledger of ``contract_digest``, its container created (private) if this is the first ledger."""
    blobs.ensure_container(BUDGET_CONTAINER)
    return ledger_store(blobs, contract_digest)


class PrivacyBudget:
    """The ledger of one contract as one job in the TEE writes it.

    ``key`` and ``token``: the job's TEE key and the attestation token that attests it (a restarted job has a
    new pair). ``job``: what identifies this job across restarts and no other job (the hash of entry 0 of its
    TEE log, which a restart continues and a duplicate job cannot have). ``check_token`` checks the tokens of
    the entries already in the ledger (signed by a trusted authority, claims satisfying the contract's release
    policy; not their expiry: they are historical).
    """

    def __init__(
        self, store: LedgerStore, contract_digest: str, check_token: TokenCheck, *, key: TeeKey, token: ValidatedToken, job: str
    ) -> None:
        if not any(key.matches(jwk) for jwk in token.runtime_keys):
            raise ValueError(f"the attestation token does not attest TEE key {key.kid}: nothing it signed would verify")
        self._store = store
        self._contract = contract_digest
        self._key, self._token, self._job = key, token, job
        checked: dict[str, Mapping[str, Any]] = {}

        def check_once(raw: str) -> Mapping[str, Any]:
            # A retry re-verifies the whole ledger: each token is checked once per writer.
            if raw not in checked:
                checked[raw] = check_token(raw)
            return checked[raw]

        self._check_token = check_once

    def _fields(self, run_id: str) -> dict[str, Any]:
        now = rfc3339_utc(datetime.datetime.now(datetime.UTC))
        return {"contract": self._contract, "run_id": run_id, "job": self._job, "time": now, "token": self._token.raw}

    def _write(self, decide: Callable[[LedgerState], _Decision]) -> LedgerEntry:
        """Read and verify the ledger, ``decide``, append what it decided where the ledger ended; on a lost race
        do it all again."""
        for _ in range(MAX_APPEND_ATTEMPTS):
            snapshot = self._store.read_all()
            state = verify_ledger(snapshot.lines, self._contract, self._check_token)
            decision = decide(state)
            if isinstance(decision, LedgerEntry):
                return decision
            entry = LedgerEntry.sign(decision, seq=state.next_seq, prev=state.head_hash, key=self._key.private_key, kid=self._key.kid)
            try:
                self._store.append(entry.line, position=snapshot.position)
            except AuditAppendConflict:
                log.debug("another run appended to %s; deciding again on the new ledger", self._store.description)
                continue
            log.info("privacy budget of contract %s: run %s %s at entry %d", self._contract, decision.run_id, decision.kind, entry.seq)
            return entry
        raise AuditStoreError(
            f"could not append to {self._store.description}: other runs appended first {MAX_APPEND_ATTEMPTS} times in a row"
        )

    def _own(self, state: LedgerState, run_id: str) -> tuple[LedgerEntry, LedgerEntry | None] | None:
        """The run's reservation and settlement if it has one, after checking it is this job's."""
        account = state.runs.get(run_id)
        if account is None:
            return None
        if account.reserved.record.job != self._job:
            raise BudgetRefused(
                f"run {run_id!r} reserved its privacy budget in another job (ledger entry {account.reserved.seq}): "
                "a run trains once"
            )
        return account.reserved, account.settled

    def reserve(self, run_id: str, epsilon: Mapping[str, float], delta: float, totals: Mapping[str, float]) -> LedgerEntry:
        """Reserve ``epsilon`` per dataset for ``run_id`` before it trains, if every dataset's budget (``totals``,
        the contract's ε per dataset for all runs) has room; the reservation, or this job's earlier one.

        Raises:
            BudgetExhausted: naming the dataset, the ε asked and the ε left.
            BudgetRefused: a dataset has no budget, the run reserved in another job or differently, or it settled.
            LedgerInvalid: the ledger does not verify (nothing is written to it).
        """
        record = Reserved(**self._fields(run_id), epsilon=dict(epsilon), delta=delta)

        def decide(state: LedgerState) -> _Decision:
            own = self._own(state, run_id)
            if own is None:
                state.check_room(record.epsilon, totals)
                return record
            reserved, settled = own
            if settled is not None:
                raise BudgetRefused(f"run {run_id!r} already settled its privacy budget (ledger entry {settled.seq})")
            kept = reserved.record
            assert isinstance(kept, Reserved)
            if (kept.epsilon, kept.delta) != (record.epsilon, record.delta):
                raise BudgetRefused(
                    f"run {run_id!r} reserved ε {kept.epsilon} δ {kept.delta} (ledger entry {reserved.seq}), not ε "
                    f"{record.epsilon} δ {record.delta}"
                )  # fmt: skip
            return reserved  # a restarted job: its reservation stands

        return self._write(decide)

    def settle(self, run_id: str, epsilon: Mapping[str, float], delta: float, accountant: str) -> LedgerEntry:
        """Record what the run spent (per dataset, as its accountant computed) once its result is final; the
        ``spent`` entry, whose :meth:`~LedgerEntry.reference` the run's statements carry.

        Raises:
            BudgetRefused: the run reserved nothing, in another job, on other datasets, or settled otherwise.
            LedgerInvalid: the ledger does not verify.
        """
        record = Spent(**self._fields(run_id), epsilon=dict(epsilon), delta=delta, accountant=accountant)
        return self._write(lambda state: self._settle(state, record))

    def release(self, run_id: str, reason: str) -> LedgerEntry:
        """Give back the reservation of a run that never trained (refused after reserving, before its first
        step). Never call it for a run that took a step: what it saw of the data is spent.

        Raises:
            BudgetRefused: the run reserved nothing, in another job, or settled otherwise.
            LedgerInvalid: the ledger does not verify.
        """
        record = Released(**self._fields(run_id), reason=reason)
        return self._write(lambda state: self._settle(state, record))

    def _settle(self, state: LedgerState, record: Spent | Released) -> _Decision:
        own = self._own(state, record.run_id)
        if own is None:
            raise BudgetRefused(f"run {record.run_id!r} reserved no privacy budget: there is nothing to settle")
        reserved, settled = own
        if settled is None:
            kept = reserved.record
            assert isinstance(kept, Reserved)
            if isinstance(record, Spent) and set(record.epsilon) != set(kept.epsilon):
                raise BudgetRefused(
                    f"run {record.run_id!r} reserved for datasets {sorted(kept.epsilon)}, not {sorted(record.epsilon)}"
                )
            return record
        # Settled before (a restarted job, or this job's own append that landed before its answer was lost):
        # the same outcome is that entry; a different one is refused.
        same = settled.record.model_dump(exclude={"time", "token"}) == record.model_dump(exclude={"time", "token"})
        if not same:
            raise BudgetRefused(f"run {record.run_id!r} already settled its privacy budget otherwise (ledger entry {settled.seq})")
        return settled
