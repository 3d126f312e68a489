"""The TEE's event log: what the TEE itself witnessed, hash-chained and signed inside the TEE.

Airflow could forge, drop or roll back what it records itself; the events that matter most are witnessed
inside the TEE and signed with the job's attested TEE key, which nobody outside the TEE holds. The entries,
the signed heads, how the key that signs is introduced, how the log reads in the run's audit log, and why a
model statement names the final head (rollback and truncation) are in docs/audit.md ("The TEE's event log").

:class:`TeeEventLog` writes a log (in the TEE); :func:`audit_events` turns it into audit events,
:func:`collect_tee_logs` gathers them back, :func:`verify_tee_log` checks them and :func:`check_holds` checks
that the audit log still holds the TEE's entries up to a head the TEE signed.
"""

from __future__ import annotations

import datetime
import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import rfc8785
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import AfterValidator, Field, ValidationError, model_validator

from securetrain.core.audit.chain import GENESIS_PREV, entry_hash
from securetrain.core.audit.errors import AuditEventInvalid
from securetrain.core.audit.events import AuditEvent, EventKind, EventSource, check_time, rfc3339_utc
from securetrain.core.contracts.base import Contract, JsonObject, Lax, first_error, matching, refusal
from securetrain.core.errors import SecurityViolation
from securetrain.core.model_provenance import ProvenanceInvalid, runtime_key, sign_statement, verify_statement_signature

HEAD_SCHEMA = "securetrain.tee-log-head/v1"
LOG_ID = r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,249}"
LogId = matching(LOG_ID, "1-250 letters, digits and . _ : + -.")
Sha256 = matching(r"[0-9a-f]{64}", "64 lowercase hex digits.")
Seq = Annotated[int, Field(ge=0)]

#: Checks an attestation token (signature by a trusted authority, claims against the release policy) and
#: returns its claims; raises a SecurityViolation if it does not verify.
TokenCheck = Callable[[str], Mapping[str, Any]]


class TeeLogInvalid(SecurityViolation):
    """The TEE's event log does not verify: an entry changed, missing or added, or a head not signed by the TEE."""


class TeeEventKind(enum.StrEnum):
    """What the TEE witnessed."""

    ATTESTED = "attested"  # {"token": raw JWT, "sequence": n, "gpu"?: GPU claims}: introduces the key that signs the heads
    KEY_RELEASED = "key_released"  # {"kek_id"}
    DATA_VALIDATED = "data_validated"  # {"aggregates": the suite's aggregates}
    CHECKPOINT_SEALED = "checkpoint_sealed"  # {"epoch", "step", "blob", "sealed_sha256", "metrics"}
    MODEL_SEALED = "model_sealed"  # {"blob", "sealed_sha256", "plaintext_sha256"}: a job's final entry
    MODEL_EXPORTED = "model_exported"  # {"source", "recipient_thumbprint", "export_sha256", "approval", ...}
    CONTRACT_ENFORCED = "contract_enforced"  # {"contract", "signers", "datasets"}: before any key was asked for
    CONTRACT_REVOKED = "contract_revoked"  # {"contract", "party", "revoked_at", "reason"} or {"contract", "kek_id", "refusal"}
    BUDGET_RESERVED = "budget_reserved"  # {"contract", "epsilon": {dataset: ε}, "delta", "ledger": {seq, hash}}
    BUDGET_SPENT = "budget_spent"  # {"contract", "epsilon": {dataset: ε}, "delta", "accountant", "ledger": {seq, hash}}


# How each TEE entry reads in the run's audit log.
_AUDIT_KINDS = {
    TeeEventKind.ATTESTED: EventKind.EVIDENCE_APPRAISED,
    TeeEventKind.KEY_RELEASED: EventKind.KEY_RELEASED,
    TeeEventKind.DATA_VALIDATED: EventKind.DATA_VALIDATED,
    TeeEventKind.CHECKPOINT_SEALED: EventKind.CHECKPOINT_WRITTEN,
    TeeEventKind.MODEL_SEALED: EventKind.MODEL_SEALED,
    TeeEventKind.MODEL_EXPORTED: EventKind.EXPORT,
    TeeEventKind.CONTRACT_ENFORCED: EventKind.GOVERNANCE,
    TeeEventKind.CONTRACT_REVOKED: EventKind.GOVERNANCE,
    TeeEventKind.BUDGET_RESERVED: EventKind.PRIVACY_BUDGET,
    TeeEventKind.BUDGET_SPENT: EventKind.PRIVACY_BUDGET,
}


def _plain_json(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``value`` as it reads back from its canonical JSON (so that writer and verifier hash the same value)."""
    try:
        return json.loads(rfc8785.dumps(dict(value)))  # type: ignore[no-any-return]
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise ValueError(f"{what} is not plain JSON: {exc}") from None


def _utc_time(value: str) -> str:
    try:
        return check_time(value)
    except AuditEventInvalid as exc:
        raise refusal(str(exc)) from None


UtcTime = Annotated[str, AfterValidator(_utc_time)]


Parsed = TypeVar("Parsed", bound=Contract)


def _parsed(model: type[Parsed], value: object, what: str) -> Parsed:
    """``value`` as ``model``; :class:`TeeLogInvalid` naming the field that is wrong (it came over the network)."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        where, reason = first_error(exc)
        raise TeeLogInvalid(f"{what} is malformed ({where or 'the document'}: {reason}): it is not what the TEE wrote") from None


class TeeEntry(Contract):
    """One entry of a TEE log, as stored."""

    details: JsonObject
    kind: Lax[TeeEventKind]
    prev: Sha256
    seq: Seq
    time: UtcTime

    @property
    def hash(self) -> str:
        """SHA-256 of the entry's canonical bytes: what the next entry carries as ``prev``, a head as ``head_hash``."""
        return entry_hash(rfc8785.dumps(self.to_json()))


class TeeLogHead(Contract):
    """The head of a TEE log: entry ``seq`` of log ``log_id`` (run ``run_id``) hashes to ``head_hash``."""

    head_hash: Sha256
    log_id: LogId
    run_id: str
    schema_: Literal["securetrain.tee-log-head/v1"] = Field(HEAD_SCHEMA, alias="schema")
    seq: Seq
    time: UtcTime

    def reference(self) -> dict[str, Any]:
        """What a model statement carries of the head: enough to find the entries it vouches for."""
        return {"head_hash": self.head_hash, "log_id": self.log_id, "seq": self.seq}


class HeadSignature(Contract):
    """The TEE's PS256 signature over a head, by the key named ``kid`` (RFC 7638 thumbprint)."""

    algorithm: Literal["PS256"]  # model_provenance.TEE_SIGNATURE_ALGORITHM
    kid: str
    value: str


class SignedHead(Contract):
    """A head and the TEE's signature over it."""

    head: TeeLogHead
    signature: HeadSignature

    @classmethod
    def sign(cls, head: TeeLogHead, key: rsa.RSAPrivateKey, kid: str) -> SignedHead:
        return cls(head=head, signature=HeadSignature(kid=kid, **sign_statement(key, head.to_json())))

    @classmethod
    def parse(cls, value: object, log_id: str) -> SignedHead:
        """A signed head of log ``log_id`` as stored (the signature is checked by :func:`verify_tee_log`)."""
        signed = _parsed(cls, value, f"a signed head of TEE log {log_id}")
        if signed.head.log_id != log_id:
            raise TeeLogInvalid(f"a signed head of TEE log {log_id} names log {signed.head.log_id!r}")
        return signed

    def verify(self, key: rsa.RSAPublicKey) -> None:
        try:
            verify_statement_signature(
                key, self.head.to_json(), self.signature.model_dump(),
                what=f"the head of TEE log {self.head.log_id} at seq {self.head.seq}",
            )  # fmt: skip
        except ProvenanceInvalid as exc:
            raise TeeLogInvalid(str(exc)) from None


class TeeLogDocument(Contract):
    """A TEE log's stored and served form (:meth:`TeeEventLog.to_json`)."""

    log_id: LogId
    run_id: str
    entries: list[TeeEntry]
    head: SignedHead | None

    @model_validator(mode="after")
    def _head_of_this_log(self) -> TeeLogDocument:
        if self.head is not None and self.head.head.log_id != self.log_id:
            raise refusal(f"names log {self.head.head.log_id!r}", "head", "head", "log_id")
        return self


class TeeEventLog:
    """A TEE log as the TEE writes it: append an entry, sign the new head. The caller serializes appends."""

    def __init__(self, log_id: str, run_id: str) -> None:
        if not re.fullmatch(LOG_ID, log_id):
            raise ValueError(f"TEE log id {log_id!r} is not 1-250 letters, digits and . _ : + -")
        self.log_id = log_id
        self.run_id = run_id
        self._entries: list[TeeEntry] = []
        self.head: SignedHead | None = None

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> TeeEventLog:
        """Continue a log from its stored form (:meth:`to_json`), after checking its links.

        Raises:
            TeeLogInvalid: the stored log is malformed or its links are broken.
        """
        stored = _parsed(TeeLogDocument, document, "the stored TEE log")
        log = cls(stored.log_id, stored.run_id)
        collected = CollectedTeeLog(log.log_id, log.run_id)
        for entry in stored.entries:
            collected.add_entry(entry)
        log._entries = collected.linked_entries()
        log.head = stored.head
        return log

    def append(self, kind: TeeEventKind, details: Mapping[str, Any], *, key: rsa.RSAPrivateKey, kid: str) -> SignedHead:
        """Append an entry of ``kind`` happening now and sign the new head with the TEE ``key`` named ``kid``.

        Raises:
            ValueError: ``details`` is not plain JSON (RFC 8785: finite numbers, integers within ±2^53).
        """
        now = rfc3339_utc(datetime.datetime.now(datetime.UTC))
        prev = self._entries[-1].hash if self._entries else GENESIS_PREV
        details = _plain_json(details, f"the details of a {kind} entry")
        entry = TeeEntry(seq=len(self._entries), prev=prev, kind=kind, time=now, details=details)
        self._entries.append(entry)
        head = TeeLogHead(log_id=self.log_id, run_id=self.run_id, seq=entry.seq, head_hash=entry.hash, time=now)
        self.head = SignedHead.sign(head, key, kid)
        return self.head

    @property
    def entries(self) -> Sequence[TeeEntry]:
        return tuple(self._entries)

    def to_json(self) -> dict[str, Any]:
        """The stored and served form: ``{"log_id", "run_id", "entries", "head"}``."""
        return TeeLogDocument(log_id=self.log_id, run_id=self.run_id, entries=self._entries, head=self.head).to_json()


# --- in the audit log -----------------------------------------------------------------------------------------


def audit_events(document: Mapping[str, Any]) -> list[AuditEvent]:
    """A TEE log in its served form (:meth:`TeeEventLog.to_json`) as audit events, entries and head verbatim.

    Raises:
        TeeLogInvalid: the document is not a TEE log (it is parsed, not trusted: it came over the network).
    """
    log = _parsed(TeeLogDocument, document, "the TEE log")
    events = [AuditEvent(_AUDIT_KINDS[entry.kind], log.run_id, EventSource.TEE, entry.time,
                         {"tee_log": log.log_id, "entry": entry.to_json()}) for entry in log.entries]  # fmt: skip
    if log.head is not None:
        events.append(AuditEvent(EventKind.TEE_LOG_HEAD, log.run_id, EventSource.TEE, log.head.head.time,
                                 {"tee_log": log.log_id, "head": log.head.to_json()}))  # fmt: skip
    return events


@dataclass
class CollectedTeeLog:
    """The entries and signed heads of one TEE log, as gathered from an audit log (or a stored TEE log)."""

    log_id: str
    run_id: str | None
    entries: dict[int, TeeEntry] = field(default_factory=dict)
    heads: list[SignedHead] = field(default_factory=list)

    def add_entry(self, entry: TeeEntry) -> None:
        """Add an entry; the same entry twice (an audit stage retried) counts once, two different ones refuse."""
        known = self.entries.setdefault(entry.seq, entry)
        if known != entry:
            raise TeeLogInvalid(
                f"two different entries claim seq {entry.seq} of TEE log {self.log_id}: one was forged or changed"
            )

    def add_head(self, head: SignedHead) -> None:
        if head not in self.heads:
            self.heads.append(head)

    def linked_entries(self, upto: int | None = None) -> list[TeeEntry]:
        """Entries 0..``upto`` (default: all), after checking none is missing and each links to the one before.

        Raises:
            TeeLogInvalid: naming the first entry missing or out of its chain.
        """
        last = max(self.entries, default=-1) if upto is None else upto
        chain: list[TeeEntry] = []
        for seq in range(last + 1):
            entry = self.entries.get(seq)
            if entry is None:
                raise TeeLogInvalid(
                    f"entry {seq} of TEE log {self.log_id} is missing (the log holds {len(self.entries)} of its "
                    "entries): TEE events were removed from the audit log"
                )
            expected = chain[-1].hash if chain else GENESIS_PREV
            if entry.prev != expected:
                raise TeeLogInvalid(
                    f"entry {seq} of TEE log {self.log_id} does not link to entry {seq - 1}: a TEE event was changed, "
                    "replaced or reordered"
                )
            chain.append(entry)
        return chain


def collect_tee_logs(events: Iterable[AuditEvent]) -> dict[str, CollectedTeeLog]:
    """Gather the TEE logs recorded in an audit log's events (source ``tee``), by log id.

    Raises:
        TeeLogInvalid: an event from source ``tee`` is not a TEE entry or head, or two of them conflict.
    """
    logs: dict[str, CollectedTeeLog] = {}
    for event in events:
        if event.source is not EventSource.TEE:
            continue
        details = event.details
        log_id = details.get("tee_log")
        if not isinstance(log_id, str) or sorted(details) not in (["entry", "tee_log"], ["head", "tee_log"]):
            raise TeeLogInvalid(f"an audit event from the TEE ({event.kind}, {event.time}) is not a TEE log entry or head")
        log = logs.setdefault(log_id, CollectedTeeLog(log_id, event.run_id))
        if log.run_id != event.run_id:
            raise TeeLogInvalid(f"the events of TEE log {log_id} are recorded under runs {log.run_id} and {event.run_id}")
        if "entry" in details:
            log.add_entry(_parsed(TeeEntry, details["entry"], f"an entry of TEE log {log_id}"))
        else:
            log.add_head(SignedHead.parse(details["head"], log_id))
    return logs


# --- verifying ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeeLogVerdict:
    """What verifying one TEE log established."""

    log_id: str
    run_id: str
    entries: int
    head_hash: str
    kinds: Mapping[str, int]

    def summary(self) -> str:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.kinds.items()))
        return (
            f"TEE log {self.log_id} (run {self.run_id}): {self.entries} entries signed by the attested TEE, "
            f"head {self.head_hash[:16]}… ({kinds})"
        )


def verify_tee_log(log: CollectedTeeLog, check_token: TokenCheck) -> TeeLogVerdict:
    """Check one TEE log: its entries are complete and linked, every token in it is genuine and approved
    (``check_token``), every head is signed by a key such a token attested before it, and the last entry
    is covered by a signed head.

    Raises:
        TeeLogInvalid: naming what failed.
        SecurityViolation: ``check_token`` refused a token (its own subclass and message).
    """
    chain = log.linked_entries()
    if not chain:
        raise TeeLogInvalid(f"TEE log {log.log_id} holds signed heads but no entries: its entries were removed")
    introduced: dict[str, tuple[int, rsa.RSAPublicKey]] = {}
    for entry in chain:
        if entry.kind is TeeEventKind.ATTESTED:
            token = entry.details.get("token")
            if not isinstance(token, str):
                raise TeeLogInvalid(f"the attested entry {entry.seq} of TEE log {log.log_id} carries no token")
            claims = check_token(token)
            key = runtime_key(claims)  # exactly one key, checked
            introduced.setdefault(str(claims["x-ms-runtime"]["keys"][0].get("kid")), (entry.seq, key))
    if not log.heads:
        raise TeeLogInvalid(f"TEE log {log.log_id} has no head signed by the TEE: nothing vouches for its entries")
    run_ids = {head.head.run_id for head in log.heads}
    if len(run_ids) != 1 or (log.run_id is not None and run_ids != {log.run_id}):
        raise TeeLogInvalid(
            f"the TEE signed TEE log {log.log_id} for run(s) {sorted(run_ids)}, but it is recorded for run {log.run_id}"
        )
    for signed in log.heads:
        head = signed.head
        if head.seq >= len(chain):
            raise TeeLogInvalid(
                f"the TEE signed entry {head.seq} of TEE log {log.log_id}, but the log ends before it: TEE events "
                "were removed"
            )
        if chain[head.seq].hash != head.head_hash:
            raise TeeLogInvalid(
                f"the TEE signed entry {head.seq} of TEE log {log.log_id} as {head.head_hash[:16]}…, but the log "
                "holds another entry there: TEE events were changed"
            )
        attested_at, key = introduced.get(signed.signature.kid, (None, None))
        if key is None or attested_at is None or attested_at > head.seq:
            raise TeeLogInvalid(
                f"the head of TEE log {log.log_id} at seq {head.seq} is signed by key {signed.signature.kid!r}, which no "
                "attestation token in the log before it attests"
            )
        signed.verify(key)
    last_signed = max(signed.head.seq for signed in log.heads)
    if last_signed != len(chain) - 1:
        raise TeeLogInvalid(
            f"entries {last_signed + 1}-{len(chain) - 1} of TEE log {log.log_id} are not covered by a head the TEE "
            "signed: they were added by someone else"
        )
    kinds: dict[str, int] = {}
    for entry in chain:
        kinds[entry.kind.value] = kinds.get(entry.kind.value, 0) + 1
    return TeeLogVerdict(log.log_id, run_ids.pop(), len(chain), chain[-1].hash, kinds)


def check_holds(logs: Mapping[str, CollectedTeeLog], reference: Mapping[str, Any], where: str) -> None:
    """Check that ``logs`` hold the TEE's entries up to the head ``reference`` (``{"log_id", "seq", "head_hash"}``,
    as a model statement carries it): nothing the TEE recorded up to there was removed or rolled back.

    Raises:
        TeeLogInvalid: the entries are not all there, or not the ones the TEE signed.
    """
    log_id, seq, head_hash = (reference.get(name) for name in ("log_id", "seq", "head_hash"))
    if not isinstance(log_id, str) or type(seq) is not int or seq < 0 or not isinstance(head_hash, str):
        raise TeeLogInvalid(f"the TEE log head {dict(reference)} of {where} is malformed")
    log = logs.get(log_id)
    if log is None:
        raise TeeLogInvalid(
            f"the audit log holds none of the events of TEE log {log_id}, which {where} says the TEE signed up to "
            f"entry {seq}: they were removed, or the log rolled back"
        )
    chain = log.linked_entries(upto=seq)
    if chain[seq].hash != head_hash:
        raise TeeLogInvalid(
            f"entry {seq} of TEE log {log_id} is not the one the TEE signed in {where}: TEE events were changed"
        )
