"""The privacy-budget ledger of a contract: the ε each run reserved and spent, per dataset, signed by the TEE.

A contract caps the ε that all its runs together may spend on each dataset. The ledger is the running
account: one append blob per contract (``securetrain-privacy-budget/<contract digest>.jsonl``), one RFC 8785
canonical-JSON entry per line, hash-chained like the audit log (``seq``, ``prev``) and appended with the
``appendpos`` condition (:class:`~securetrain.core.audit.store.AppendBlobLines`), so two runs reserving at
once never interleave silently. Each entry is signed (PS256) by the TEE key of the job that wrote it and
carries the attestation token that attests that key: only an attested TEE adds to the account, and no entry
can be changed or taken out of the middle unnoticed. The format, what verifying proves, and how a ledger
cut back is caught are in docs/audit.md ("Privacy-budget ledger").

:func:`verify_ledger` checks a ledger and counts it (:class:`LedgerState`); :func:`check_holds` checks that a
ledger still holds the entry a TEE-signed statement names; :func:`format_budget` prints the account. The
TEE's side (reserve before training, settle after) is :mod:`securetrain.tee.privacy_budget`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Any, Literal, Protocol

import rfc8785
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field, ValidationError

from securetrain.core.audit.chain import GENESIS_PREV, entry_hash
from securetrain.core.audit.store import AppendBlobLines, LogSnapshot
from securetrain.core.audit.tee_log import Seq, Sha256, TokenCheck, UtcTime
from securetrain.core.contracts.base import Contract, first_error, matching
from securetrain.core.contracts.job_spec import ContractDigest, RunId
from securetrain.core.errors import SecurityViolation
from securetrain.core.governance.contract import TrainingContract, contract_release_policy
from securetrain.core.model_provenance import (
    ProvenanceInvalid,
    SigningKeys,
    runtime_key,
    sign_statement,
    verify_attestation_token,
    verify_statement_signature,
)
from securetrain.core.storage import BlobStore

#: The container of the ledgers, one append blob per contract.
BUDGET_CONTAINER = "securetrain-privacy-budget"
ENTRY_SCHEMA = "securetrain.privacy-budget-entry/v1"

DatasetId = matching(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", "A dataset id of the contract.")
Epsilon = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Delta = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
#: ε per dataset: DP-SGD over the datasets of a run gives every one of them the run's ε.
Epsilons = Annotated[dict[DatasetId, Epsilon], Field(min_length=1)]
Token = Annotated[str, Field(min_length=1, max_length=256 * 1024)]


class LedgerInvalid(SecurityViolation):
    """The ledger is not what TEEs wrote: an entry changed, forged, removed or inserted; ``seq`` names where."""

    def __init__(self, seq: int | None, message: str) -> None:
        super().__init__(message)
        self.seq = seq


class LedgerRolledBack(LedgerInvalid):
    """The ledger no longer holds an entry a TEE-signed statement names: it was cut back or rewritten."""


class BudgetRefused(SecurityViolation):
    """The ledger refuses a reservation or settlement (a run id reserved by another job, a dataset without a budget)."""


class BudgetExhausted(BudgetRefused):
    """Reserving ``asked`` ε of ``dataset`` would exceed what its budget has ``left``."""

    def __init__(self, dataset: str, asked: float, left: float) -> None:
        super().__init__(
            f"the privacy budget of dataset {dataset!r} has ε {left:g} left, the run asks for ε {asked:g}: refused"
        )
        self.dataset, self.asked, self.left = dataset, asked, left


class LedgerKind(enum.StrEnum):
    RESERVED = "reserved"  # before training: the run's ε, counted until the run settles
    SPENT = "spent"  # the run's result is final: the ε its accountant computed
    RELEASED = "released"  # the run never trained: its reservation is given back


class _Record(Contract):
    """What every entry says: for which contract and run, when, by which job, and the token of the signing key."""

    contract: ContractDigest
    run_id: RunId
    #: The job instance that reserved (and alone may settle) the run: the hash of entry 0 of its TEE log.
    job: Sha256
    time: UtcTime
    #: The attestation token whose ``x-ms-runtime.keys`` holds the key that signed this entry.
    token: Token


class Reserved(_Record):
    kind: Literal["reserved"] = "reserved"
    epsilon: Epsilons
    delta: Delta


class Spent(_Record):
    kind: Literal["spent"] = "spent"
    epsilon: Epsilons
    delta: Delta
    accountant: Literal["prv", "rdp"]


class Released(_Record):
    kind: Literal["released"] = "released"
    reason: Annotated[str, Field(min_length=1, max_length=2000)]


LedgerRecord = Annotated[Reserved | Spent | Released, Field(discriminator="kind")]


class EntrySignature(Contract):
    """The TEE's PS256 signature (base64url) over the entry without its signature, by the key named ``kid``."""

    algorithm: Literal["PS256"]
    kid: str
    value: str


class LedgerEntry(Contract):
    """One line of the ledger."""

    prev: Sha256
    record: LedgerRecord
    schema_: Literal["securetrain.privacy-budget-entry/v1"] = Field(ENTRY_SCHEMA, alias="schema")
    seq: Seq
    signature: EntrySignature

    @classmethod
    def sign(cls, record: Reserved | Spent | Released, *, seq: int, prev: str, key: rsa.RSAPrivateKey, kid: str) -> LedgerEntry:
        """Entry ``seq`` after the entry hashing to ``prev``, signed by the TEE ``key`` named ``kid``."""
        signed = {"prev": prev, "record": record.to_json(), "schema": ENTRY_SCHEMA, "seq": seq}
        return cls(prev=prev, record=record, seq=seq, signature=EntrySignature(kid=kid, **sign_statement(key, signed)))

    def signed_part(self) -> dict[str, Any]:
        """What the signature covers: the entry without it (its chain position included, so it cannot move)."""
        document = self.to_json()
        del document["signature"]
        return document

    @property
    def line(self) -> bytes:
        """The stored bytes: RFC 8785 canonical JSON, without the newline."""
        return rfc8785.dumps(self.to_json())

    @property
    def hash(self) -> str:
        """SHA-256 of the stored bytes: what the next entry carries as ``prev``."""
        return entry_hash(self.line)

    def reference(self) -> dict[str, Any]:
        """What a statement carries to name this entry, for :func:`check_holds`."""
        return {"contract": self.record.contract, "seq": self.seq, "head_hash": self.hash}


def _parse(line: bytes, seq: int) -> LedgerEntry:
    """The entry stored at position ``seq``, in canonical form; its links and signature are not checked here."""
    try:
        document = json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        raise LedgerInvalid(seq, f"entry {seq} of the ledger is not JSON: it was changed") from None
    try:
        entry = LedgerEntry.model_validate(document)
    except ValidationError as exc:
        where, reason = first_error(exc)
        raise LedgerInvalid(seq, f"entry {seq} of the ledger is malformed ({where}: {reason}): it was changed") from None
    try:
        canonical = entry.line
    except rfc8785.CanonicalizationError:  # an integer beyond ±2^53, a lone surrogate: no canonical form
        canonical = None
    if canonical != line:
        raise LedgerInvalid(seq, f"entry {seq} of the ledger is not in canonical RFC 8785 form: it was changed")
    return entry


# --- the account ----------------------------------------------------------------------------------------------


def _exact(value: float) -> Decimal:
    """``value`` as the decimal it is written as. ε is summed in decimal: binary floating point would refuse
    a run that fits exactly (0.1 + 0.2 > 0.3) or let rounding decide a run at the edge of the budget."""
    return Decimal(repr(value))


@dataclass(frozen=True)
class RunAccount:
    """A run's reservation and, once its result is final, its settlement (``spent`` or ``released``)."""

    reserved: LedgerEntry
    settled: LedgerEntry | None = None

    @property
    def status(self) -> LedgerKind:
        return LedgerKind((self.settled or self.reserved).record.kind)

    def counted(self) -> Mapping[str, float]:
        """The ε this run counts against each dataset: spent if settled, nothing if released, else all it
        reserved (a run that crashed may have spent its whole reservation)."""
        record = (self.settled or self.reserved).record
        return {} if isinstance(record, Released) else record.epsilon


@dataclass(frozen=True)
class LedgerState:
    """A verified ledger: its entries in order and the account of each run."""

    contract: str
    entries: tuple[LedgerEntry, ...]
    runs: Mapping[str, RunAccount]

    @property
    def next_seq(self) -> int:
        return len(self.entries)

    @property
    def head_hash(self) -> str:
        """The hash the next entry links to."""
        return self.entries[-1].hash if self.entries else GENESIS_PREV

    def _counted(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for account in self.runs.values():
            for dataset, epsilon in account.counted().items():
                totals[dataset] = totals.get(dataset, Decimal(0)) + _exact(epsilon)
        return totals

    def spent_and_reserved(self) -> tuple[dict[str, float], dict[str, float]]:
        """(ε spent per dataset by settled runs, ε reserved per dataset by runs still open)."""
        spent: dict[str, Decimal] = {}
        reserved: dict[str, Decimal] = {}
        for account in self.runs.values():
            bucket = reserved if account.settled is None else spent
            for dataset, epsilon in account.counted().items():
                bucket[dataset] = bucket.get(dataset, Decimal(0)) + _exact(epsilon)
        return ({dataset: float(value) for dataset, value in sorted(spent.items())},
                {dataset: float(value) for dataset, value in sorted(reserved.items())})  # fmt: skip

    def counted(self) -> dict[str, float]:
        """ε counted per dataset: spent by settled runs plus reserved by runs still open."""
        return {dataset: float(value) for dataset, value in sorted(self._counted().items())}

    def remaining(self, dataset: str, total: float) -> float:
        """What is left of ``dataset``'s budget of ``total`` ε (negative if runs spent more than it had)."""
        return float(_exact(total) - self._counted().get(dataset, Decimal(0)))

    def check_room(self, epsilon: Mapping[str, float], totals: Mapping[str, float]) -> None:
        """Refuse a reservation of ``epsilon`` that any dataset's budget (``totals``) has no room for.

        Raises:
            BudgetRefused: a dataset has no budget in ``totals`` (it cannot be checked, so it is refused).
            BudgetExhausted: naming the first dataset (by id) whose budget is too small.
        """
        counted = self._counted()
        for dataset in sorted(epsilon):
            if dataset not in totals:
                raise BudgetRefused(f"the contract sets no privacy budget for dataset {dataset!r}: refused")
            left = _exact(totals[dataset]) - counted.get(dataset, Decimal(0))
            if _exact(epsilon[dataset]) > left:
                raise BudgetExhausted(dataset, epsilon[dataset], float(left))


def _signing_key(entry: LedgerEntry, keys: dict[str, tuple[str, rsa.RSAPublicKey]], check_token: TokenCheck) -> rsa.RSAPublicKey:
    """The key the entry's token attests, once the token is checked (each distinct token once)."""
    seq, token = entry.seq, entry.record.token
    if token not in keys:
        try:
            claims = check_token(token)
            key = runtime_key(claims)
        except SecurityViolation as exc:
            raise LedgerInvalid(seq, f"the attestation token of ledger entry {seq} does not verify: {exc}") from None
        keys[token] = (str(claims["x-ms-runtime"]["keys"][0].get("kid")), key)
    kid, key = keys[token]
    if entry.signature.kid != kid:
        raise LedgerInvalid(seq, f"ledger entry {seq} is signed by key {entry.signature.kid!r}, not the key {kid!r} its token attests")
    return key


def _account(runs: dict[str, RunAccount], entry: LedgerEntry) -> None:
    """Add ``entry`` to its run's account; a run reserves once, before it settles once, by the job that reserved."""
    record, seq = entry.record, entry.seq
    account = runs.get(record.run_id)
    if isinstance(record, Reserved):
        if account is not None:
            raise LedgerInvalid(seq, f"ledger entry {seq} reserves for run {record.run_id!r} again (first at entry {account.reserved.seq})")
        runs[record.run_id] = RunAccount(entry)
        return
    if account is None:
        raise LedgerInvalid(seq, f"ledger entry {seq} settles run {record.run_id!r}, which reserved nothing before it")
    if account.settled is not None:
        raise LedgerInvalid(seq, f"ledger entry {seq} settles run {record.run_id!r} again (first at entry {account.settled.seq})")
    reserved = account.reserved.record
    assert isinstance(reserved, Reserved)  # only a reservation opens an account
    if record.job != reserved.job:
        raise LedgerInvalid(seq, f"ledger entry {seq} settles run {record.run_id!r} from a job other than the one that reserved")
    if isinstance(record, Spent) and set(record.epsilon) != set(reserved.epsilon):
        raise LedgerInvalid(seq, f"ledger entry {seq} spends on datasets other than run {record.run_id!r} reserved")
    runs[record.run_id] = RunAccount(account.reserved, entry)


def verify_ledger(lines: Sequence[bytes], contract_digest: str, check_token: TokenCheck) -> LedgerState:
    """Check the ledger of ``contract_digest`` as stored (``lines``, without newlines) and count it.

    Every entry is canonical, is the one its position calls for, links to the one before, belongs to this
    contract, and is signed by the key its attestation token attests, the token passing ``check_token``
    (signed by a trusted authority, claims satisfying the release policy: an approved TEE enforcing this
    contract); each run reserves once, then settles once, by the same job.

    Raises:
        LedgerInvalid: naming the first entry that fails.
    """
    keys: dict[str, tuple[str, rsa.RSAPublicKey]] = {}
    entries: list[LedgerEntry] = []
    runs: dict[str, RunAccount] = {}
    prev = GENESIS_PREV
    for position, line in enumerate(lines):
        entry = _parse(line, position)
        if entry.seq != position:
            what = f"entries {position}-{entry.seq - 1} were removed" if entry.seq > position else "an entry was inserted"
            raise LedgerInvalid(position, f"entry {position} of the ledger claims seq {entry.seq}: {what}")
        if entry.prev != prev:
            raise LedgerInvalid(
                position, f"entry {position} of the ledger does not link to entry {position - 1}: an entry before it "
                "was changed, removed or inserted"
            )  # fmt: skip
        if entry.record.contract != contract_digest:
            raise LedgerInvalid(position, f"entry {position} of the ledger is for contract {entry.record.contract}, not {contract_digest}")
        key = _signing_key(entry, keys, check_token)
        try:
            verify_statement_signature(key, entry.signed_part(), entry.signature.model_dump(), what=f"ledger entry {position}")
        except ProvenanceInvalid as exc:
            raise LedgerInvalid(position, str(exc)) from None
        _account(runs, entry)
        entries.append(entry)
        prev = entry.hash
    return LedgerState(contract_digest, tuple(entries), MappingProxyType(runs))


def check_holds(state: LedgerState, reference: Mapping[str, Any]) -> None:
    """Check that the verified ledger ``state`` still holds the entry ``reference`` names (``{"contract", "seq",
    "head_hash"}``, :meth:`LedgerEntry.reference`, as a TEE-signed statement carries it). A ledger cut back
    (rolled back) to before that entry, or rewritten from it, verifies on its own; this is what catches it.

    Raises:
        LedgerRolledBack: it does not.
    """
    contract, seq, head_hash = (reference.get(name) for name in ("contract", "seq", "head_hash"))
    if contract != state.contract or type(seq) is not int or seq < 0 or not isinstance(head_hash, str):
        raise LedgerRolledBack(None, f"the ledger reference {dict(reference)} is malformed or names another contract")
    if seq >= len(state.entries):
        raise LedgerRolledBack(
            seq, f"the ledger of contract {contract} ends at entry {len(state.entries) - 1}, but a TEE signed its entry "
            f"{seq}: it was cut back (rolled back)"
        )  # fmt: skip
    if state.entries[seq].hash != head_hash:
        raise LedgerRolledBack(seq, f"entry {seq} of the ledger of contract {contract} is not the one a TEE signed: it was rewritten")


# --- storage and reading --------------------------------------------------------------------------------------


class LedgerStore(Protocol):
    """Where a ledger's lines are (:class:`~securetrain.core.audit.store.AppendBlobLines` in storage)."""

    @property
    def description(self) -> str: ...

    def read_all(self) -> LogSnapshot: ...

    def append(self, line: bytes, *, position: int) -> int:
        """Append ``line`` if the ledger still ends at ``position``; AuditAppendConflict if not."""
        ...


def ledger_store(blobs: BlobStore, contract_digest: str) -> AppendBlobLines:
    """The ledger of ``contract_digest`` in ``blobs`` (an empty ledger if none was written yet)."""
    return AppendBlobLines(blobs.container_client(BUDGET_CONTAINER).get_blob_client(f"{contract_digest}.jsonl"))


def read_ledger(store: LedgerStore, contract_digest: str, check_token: TokenCheck) -> LedgerState:
    """The ledger in ``store``, verified (:func:`verify_ledger`)."""
    return verify_ledger(store.read_all().lines, contract_digest, check_token)


def read_contract_ledger(blobs: BlobStore, contract: TrainingContract, keys_for: Callable[[str], SigningKeys]) -> LedgerState:
    """``contract``'s ledger in ``blobs``, verified by anyone, no TEE needed: each entry's attestation token checked
    as historical evidence (signed by a key its issuer publishes, ``keys_for``; its claims satisfying the
    contract's own release policy, which requires the contract's digest)."""
    digest, policy = contract.digest(), contract_release_policy(contract)
    return read_ledger(ledger_store(blobs, digest), digest, lambda raw: verify_attestation_token(raw, policy, keys_for))


def _show(value: float | Decimal) -> str:
    """An ε as written, without exponent or trailing zeros."""
    exact = value if isinstance(value, Decimal) else _exact(value)
    return format(exact.normalize(), "f")


def format_budget(state: LedgerState, totals: Mapping[str, float]) -> str:
    """The account as a table: per dataset the budget, spent, reserved by open runs, left; then each run."""
    spent, open_ = state.spent_and_reserved()
    rows = [("dataset", "budget ε", "spent ε", "reserved ε", "left ε")]
    for dataset in sorted(set(totals) | set(spent) | set(open_)):
        total = _show(totals[dataset]) if dataset in totals else "none"
        left = _show(state.remaining(dataset, totals[dataset])) if dataset in totals else "-"
        rows.append((dataset, total, _show(spent.get(dataset, 0.0)), _show(open_.get(dataset, 0.0)), left))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"privacy budget of contract {state.contract} ({len(state.entries)} ledger entries, verified)"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if state.runs:
        lines.append("runs:")
    for run_id, account in state.runs.items():
        epsilons = ", ".join(f"{dataset} {_show(epsilon)}" for dataset, epsilon in sorted(account.counted().items()))
        lines.append(f"  {run_id}: {account.status.value} (entry {(account.settled or account.reserved).seq}) {epsilons}".rstrip())
    return "\n".join(lines)
