"""A run's whole audit trail, verified: the chain under the pinned audit key, and the TEE's own logs in it.

The audit log's chain and checkpoints (:mod:`securetrain.core.audit.chain`) prove that the entries are the
ones the holder of the audit key signed, which is the pipeline, that is Airflow. The TEE's logs inside it
(:mod:`securetrain.core.audit.tee_log`) prove what the TEE witnessed, whoever stored them. And the TEE log
heads that the run's registered models carry (signed by the TEE in the model statement) prove how far
the TEE's log reached, so a log cut short or rolled back before that head is refused.

Entries after the last checkpoint are refused unless every one of them is a TEE event (the TEE, which
does not hold the audit key, appends the export log's entries itself) or the caller allows an unsigned
tail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securetrain.core.audit.chain import AuditEntry, ChainVerdict, verify
from securetrain.core.audit.errors import UnsignedEntries
from securetrain.core.audit.events import EventSource
from securetrain.core.audit.tee_log import (
    TeeLogVerdict,
    TokenCheck,
    check_holds,
    collect_tee_logs,
    verify_tee_log,
)
from securetrain.core.model_provenance import ProvenanceInvalid, runtime_key, verify_statement_signature


@dataclass(frozen=True)
class TrailVerdict:
    """What verifying a whole audit trail established."""

    chain: ChainVerdict
    tee_logs: Sequence[TeeLogVerdict]
    anchors: Sequence[str]
    tee_only_tail: int

    def lines(self) -> list[str]:
        """One line per finding, for people."""
        lines = [self.chain.summary()]
        if self.tee_only_tail:
            lines.append(f"the last {self.tee_only_tail} entries are vouched for by the TEE's signatures alone")
        lines += [verdict.summary() for verdict in self.tee_logs]
        lines += [f"holds the TEE's events up to the head {anchor}" for anchor in self.anchors]
        if not self.tee_logs:
            lines.append("no TEE events in this log")
        return lines


def attested_head(provenance: Mapping[str, Any], check_token: TokenCheck) -> Mapping[str, Any]:
    """The TEE log head a model's provenance names, once its attestation token verifies and the TEE's
    signature over the statement does (a manifest is the pipeline's to write; only the TEE's word counts).

    Raises:
        ProvenanceInvalid: the provenance is malformed, or a signature does not verify.
    """
    try:
        claims = check_token(provenance["attestation_token"])
        statement = provenance["statement"]
        verify_statement_signature(runtime_key(claims), statement, provenance["tee_signature"])
        return statement["tee_log_head"]  # type: ignore[no-any-return]
    except (KeyError, TypeError) as exc:
        raise ProvenanceInvalid(f"the model's provenance is incomplete ({type(exc).__name__}: {exc})") from None


def verify_trail(
    entries: Sequence[bytes],
    checkpoints: Sequence[bytes],
    audit_key: Ed25519PublicKey,
    *,
    check_token: TokenCheck,
    anchors: Sequence[tuple[str, Mapping[str, Any]]] = (),
    allow_unsigned_tail: bool = False,
) -> TrailVerdict:
    """Verify stored audit-log lines with the (pinned) audit public key and the TEE's signatures.

    ``anchors``: ``(where, head reference)`` for each TEE log head the log must hold, e.g. from
    :func:`attested_head` of each of the run's registered models.

    Raises:
        AuditChainBroken: the chain or its checkpoints (see :func:`securetrain.core.audit.chain.verify`), or
            entries after the last checkpoint that the TEE did not sign.
        TeeLogInvalid: a TEE log in it does not verify, or the log lacks TEE events an anchor names.
        SecurityViolation: an attestation token in it was refused.
    """
    chain = verify(entries, checkpoints, audit_key, allow_unsigned_tail=True)
    events = [AuditEntry.parse(line, position).event for position, line in enumerate(entries)]
    logs = collect_tee_logs(events)
    verdicts = [verify_tee_log(log, check_token) for log in logs.values()]
    for where, reference in anchors:
        check_holds(logs, reference, where)  # every log in ``logs`` verified above
    first_unsigned = 0 if chain.signed_through is None else chain.signed_through + 1
    not_tee = [i for i in range(first_unsigned, len(events)) if events[i].source is not EventSource.TEE]
    if not_tee and not allow_unsigned_tail:
        raise UnsignedEntries(
            not_tee[0],
            f"audit entries {first_unsigned}-{len(events) - 1} are not covered by a signed checkpoint, and entry "
            f"{not_tee[0]} is not the TEE's either, so nothing vouches for it (an appended forgery looks the same); "
            "a closed log ends with a checkpoint of its last entry. For a log still being written, allow an "
            "unsigned tail",
        )
    anchors_checked = [f"{reference.get('log_id')}#{reference.get('seq')} ({where})" for where, reference in anchors]
    tee_tail = 0 if not_tee else chain.unsigned_entries
    return TrailVerdict(chain, verdicts, anchors_checked, tee_tail)
