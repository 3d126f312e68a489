"""The audit log's hash chain: entries in canonical JSON (RFC 8785), each linked to the one before.

The entry format and why it is canonical JSON are in docs/audit.md ("Entries: the hash chain").
:func:`verify` walks the stored lines and names the first entry whose evidence is wrong, telling apart,
where the evidence allows, an entry that was changed, removed, reordered or inserted (:func:`_classify`),
then checks the signed checkpoints (:mod:`securetrain.core.audit.checkpoints`) against the entries: a hash
chain alone only proves that the entries are consistent with each other; the signed checkpoint of the head
proves they are the ones the pipeline wrote.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securetrain.core.audit.checkpoints import Checkpoint
from securetrain.core.audit.errors import (
    AuditEventInvalid,
    CheckpointMismatch,
    EntriesRemoved,
    EntriesReordered,
    EntryChanged,
    EntryInserted,
    UnsignedEntries,
)
from securetrain.core.audit.events import AuditEvent

#: The ``prev`` of the first entry.
GENESIS_PREV = "0" * 64
_HASH = re.compile(r"[0-9a-f]{64}")


def entry_hash(line: bytes) -> str:
    """The hash of a stored entry: hex SHA-256 of its bytes (without the line's newline)."""
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the chain: its sequence number, the previous entry's hash, the event, its stored bytes."""

    seq: int
    prev: str
    event: AuditEvent
    line: bytes

    @property
    def hash(self) -> str:
        """This entry's hash, which the next entry carries as ``prev``."""
        return entry_hash(self.line)

    @classmethod
    def build(cls, seq: int, prev: str, event: AuditEvent) -> AuditEntry:
        """The entry ``seq`` linking to ``prev``, with its canonical bytes."""
        line = rfc8785.dumps({"event": event.to_json(), "prev": prev, "seq": seq})
        return cls(seq=seq, prev=prev, event=event, line=line)

    @classmethod
    def parse(cls, line: bytes, position: int) -> AuditEntry:
        """Parse the stored entry at ``position`` (0-based line number), checking its form but not its links.

        Raises:
            EntryChanged: not canonical JSON of an entry; ``seq`` is ``position``.
        """

        def changed(why: str) -> EntryChanged:
            return EntryChanged(position, f"audit entry {position} was changed: {why}")

        try:
            document = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise changed("it is not JSON") from None
        if not isinstance(document, dict) or sorted(document) != ["event", "prev", "seq"]:
            raise changed("it is not an object with exactly 'event', 'prev' and 'seq'")
        seq, prev = document["seq"], document["prev"]
        if type(seq) is not int or seq < 0:
            raise changed(f"its seq {seq!r} is not a non-negative integer")
        if not isinstance(prev, str) or not _HASH.fullmatch(prev):
            raise changed("its prev is not 64 lowercase hex digits")
        try:
            event = AuditEvent.from_json(document["event"])
            canonical = rfc8785.dumps(document)
        except (AuditEventInvalid, rfc8785.CanonicalizationError) as exc:
            raise changed(f"its event is invalid ({exc})") from None
        if canonical != line:
            raise changed("its bytes are not the canonical RFC 8785 form of its content")
        return cls(seq=seq, prev=prev, event=event, line=line)


class AuditChain:
    """The head of a chain, and the builder of the entries that extend it.

    Start empty, or from stored lines with :meth:`from_lines` (which checks their links). :meth:`append`
    returns the next entry and moves the head to it; writing it to a store is the caller's business.
    """

    def __init__(self) -> None:
        self._next_seq = 0
        self._head_hash = GENESIS_PREV

    @classmethod
    def from_lines(cls, lines: Sequence[bytes]) -> AuditChain:
        """The chain whose entries are ``lines``, after checking that each links to the one before.

        Raises:
            AuditChainBroken: a subclass naming the first entry whose links are wrong.
        """
        entries = _parse_and_link(lines, signed={})
        chain = cls()
        if entries:
            chain._next_seq = entries[-1].seq + 1
            chain._head_hash = entries[-1].hash
        return chain

    @property
    def next_seq(self) -> int:
        """The sequence number the next entry gets (the number of entries so far)."""
        return self._next_seq

    @property
    def head_hash(self) -> str | None:
        """The hash of the last entry, None while the chain is empty."""
        return self._head_hash if self._next_seq else None

    def append(self, event: AuditEvent) -> AuditEntry:
        """The entry recording ``event`` after the current head; the head moves to it."""
        entry = AuditEntry.build(self._next_seq, self._head_hash, event)
        self._next_seq += 1
        self._head_hash = entry.hash
        return entry


@dataclass(frozen=True)
class ChainVerdict:
    """What a successful verification established."""

    entries: int
    head_hash: str | None
    checkpoints: int
    signed_through: int | None
    unsigned_entries: int

    def summary(self) -> str:
        """One line for people."""
        if not self.entries:
            return f"audit log is empty ({self.checkpoints} checkpoints)"
        signed = "no entry" if self.signed_through is None else f"entries 0-{self.signed_through}"
        tail = f"; {self.unsigned_entries} later entries are NOT signed yet" if self.unsigned_entries else ""
        return (
            f"audit log verifies: {self.entries} entries, chain intact, head {self.head_hash}, "
            f"{signed} covered by {self.checkpoints} signed checkpoints{tail}"
        )


def verify(
    entries: Sequence[bytes],
    checkpoints: Sequence[bytes],
    verify_key: Ed25519PublicKey,
    *,
    allow_unsigned_tail: bool = False,
) -> ChainVerdict:
    """Verify stored entry lines and checkpoint lines (each without its newline) with the audit public key.

    In order: every checkpoint's form and signature; every entry's form and link to the one before; every
    checkpoint against the entry it names; and, unless ``allow_unsigned_tail`` (a log still being written),
    that the last entry is covered by a checkpoint.

    Raises:
        CheckpointInvalid: a checkpoint is malformed or its signature fails.
        EntryChanged, EntriesRemoved, EntriesReordered, EntryInserted: the first broken entry, by ``seq``.
        CheckpointMismatch: a signed head disagrees with the entries (they were rewritten and relinked).
        UnsignedEntries: entries after the last checkpoint, and ``allow_unsigned_tail`` is False.
    """
    parsed = [Checkpoint.parse(line, number) for number, line in enumerate(checkpoints, start=1)]
    for checkpoint in parsed:
        checkpoint.verify(verify_key)
    signed: dict[int, set[str]] = {}
    for checkpoint in parsed:
        signed.setdefault(checkpoint.seq, set()).add(checkpoint.head_hash)

    chain = _parse_and_link(entries, signed)
    _check_checkpoints(chain, sorted(parsed, key=lambda c: c.seq))

    signed_through = max(signed) if signed else None
    first_unsigned = 0 if signed_through is None else signed_through + 1
    unsigned = max(0, len(chain) - first_unsigned)
    if unsigned and not allow_unsigned_tail:
        raise UnsignedEntries(
            first_unsigned,
            f"audit entries {first_unsigned}-{len(chain) - 1} are not covered by a signed checkpoint, so nothing "
            "vouches that the pipeline wrote them (an appended forgery looks the same); a closed log ends with a "
            "checkpoint of its last entry. For a log still being written, allow an unsigned tail",
        )
    return ChainVerdict(
        entries=len(chain),
        head_hash=chain[-1].hash if chain else None,
        checkpoints=len(parsed),
        signed_through=signed_through,
        unsigned_entries=unsigned,
    )


def _check_checkpoints(chain: Sequence[AuditEntry], checkpoints: Sequence[Checkpoint]) -> None:
    """Check each signed head against the (already linked) entries, lowest seq first."""
    last_agreeing = -1
    for checkpoint in checkpoints:
        if checkpoint.seq >= len(chain):
            raise EntriesRemoved(
                len(chain),
                f"audit entries from seq {len(chain)} on were removed: the checkpoint made {checkpoint.time} signs "
                f"entry {checkpoint.seq}, but the log ends after {len(chain)} entries",
                count=checkpoint.seq + 1 - len(chain),
            )
        if chain[checkpoint.seq].hash != checkpoint.head_hash:
            raise CheckpointMismatch(
                checkpoint.seq,
                f"the signed checkpoint of seq {checkpoint.seq} (made {checkpoint.time}) names head hash "
                f"{checkpoint.head_hash}, but entry {checkpoint.seq} hashes to {chain[checkpoint.seq].hash}: entry "
                f"{checkpoint.seq} was changed, or entries {last_agreeing + 1}-{checkpoint.seq} were rewritten and "
                "relinked",
            )
        last_agreeing = checkpoint.seq


def _parse_and_link(lines: Sequence[bytes], signed: Mapping[int, set[str]]) -> list[AuditEntry]:
    """Parse every line and check that line i is entry i linking to line i-1; raise at the first break.

    ``signed`` maps a sequence number to the head hashes that verified checkpoints give it: evidence,
    where present, of which of two entries around a broken link is the intact one.
    """
    hashes = [entry_hash(line) for line in lines]
    parsed: list[AuditEntry | None] = []
    first_malformed: EntryChanged | None = None
    for position, line in enumerate(lines):
        try:
            parsed.append(AuditEntry.parse(line, position))
        except EntryChanged as exc:
            parsed.append(None)
            first_malformed = first_malformed or exc
    for position, entry in enumerate(parsed):
        if entry is None:
            assert first_malformed is not None and first_malformed.seq == position
            raise first_malformed
        expected_prev = hashes[position - 1] if position else GENESIS_PREV
        if entry.seq != position or entry.prev != expected_prev:
            raise _classify(position, parsed, hashes, signed)
    return [entry for entry in parsed if entry is not None]


def _classify(
    i: int, parsed: Sequence[AuditEntry | None], hashes: Sequence[str], signed: Mapping[int, set[str]]
) -> EntryChanged | EntriesRemoved | EntriesReordered | EntryInserted:
    """Name what happened at position ``i``, the first entry that is not the successor of entries 0..i-1.

    The rules, in order (``s`` is the seq the entry at i claims, ``h(j)`` the hash of line j):

    1. ``s != i`` but its prev is ``h(i-1)``: the entry sits where it belongs but its seq was edited: changed.
    2. ``s`` is claimed by another line too: an entry was inserted (a forgery or a replayed copy). Of two
       adjacent claimants of i-1, the one the other does not link past is the intruder.
    3. ``s > i`` and the seqs are exactly 0..n-1: all entries are there, out of order: reordered at i.
    4. ``s > i`` and seq i still comes later: the entry at i is a stranger: inserted.
    5. ``s > i``: seqs i..s-1 are gone: removed.
    6. ``s == i``, prev is ``h(j)`` for an earlier j: entries j+1..i-1 were inserted (and renumbered).
    7. ``s == i``, prev matches nothing: entry i-1 or entry i (its prev) was changed. Entry i is intact if
       entry i+1 links to it or a checkpoint signs it; entry i-1 is intact if a checkpoint signs it.
    """
    entry = parsed[i]
    assert entry is not None
    s = entry.seq
    previous_hash = hashes[i - 1] if i else GENESIS_PREV
    positions: dict[int, list[int]] = {}
    for position, other in enumerate(parsed):
        if other is not None:
            positions.setdefault(other.seq, []).append(position)

    if s != i and entry.prev == previous_hash:
        return EntryChanged(i, f"audit entry {i} was changed: it links to entry {i - 1} but claims seq {s}")
    if len(positions[s]) > 1:
        intruder = i
        if s == i - 1 and parsed[i - 1] is not None and parsed[i - 1].line != entry.line:  # type: ignore[union-attr]
            before_previous = hashes[i - 2] if i >= 2 else GENESIS_PREV
            if entry.prev == before_previous:
                intruder = i - 1
        return EntryInserted(
            intruder,
            f"an audit entry was inserted at position {intruder}: seq {s} appears "
            f"{len(positions[s])} times (positions {', '.join(map(str, positions[s]))})",
        )
    if s > i:
        if set(positions) == set(range(len(parsed))):
            return EntriesReordered(
                i, f"audit entries were reordered: position {i} holds entry {s} instead of entry {i}"
            )
        if any(position > i for position in positions.get(i, ())):
            return EntryInserted(i, f"an audit entry was inserted at position {i}: it claims seq {s}, "
                                    f"and entry {i} follows it")  # fmt: skip
        return EntriesRemoved(
            i, f"audit entries {i}-{s - 1} were removed: entry {s} follows entry {i - 1}", count=s - i
        )
    for j in range(i - 2, -1, -1):
        if hashes[j] == entry.prev:
            return EntryInserted(
                j + 1, f"audit entries {j + 1}-{i - 1} were inserted: entry {i} links to entry {j}, not {i - 1}"
            )
    if i == 0:
        return EntryChanged(0, "audit entry 0 was changed: its prev is not the genesis value (64 zeros)")
    successor = parsed[i + 1] if i + 1 < len(parsed) else None
    entry_intact = (successor is not None and successor.prev == hashes[i]) or hashes[i] in signed.get(i, ())
    previous_intact = previous_hash in signed.get(i - 1, ())
    entry_broken = (successor is not None and successor.prev != hashes[i]) or (
        i in signed and hashes[i] not in signed[i]
    )
    if not entry_intact and (previous_intact or entry_broken):
        return EntryChanged(i, f"audit entry {i} was changed: its prev does not match entry {i - 1}, which is intact")
    certainty = "" if entry_intact else f" (or entry {i}'s prev was edited: nothing later vouches for either)"
    return EntryChanged(
        i - 1, f"audit entry {i - 1} was changed: entry {i} carries a different hash for it{certainty}"
    )
