"""What the TEE witnesses, recorded by the agent in a TEE event log signed with the attested TEE key.

The log format, its signatures and their verification are the core's
(:mod:`securetrain.core.audit.tee_log`); this module only feeds it from the agent: a job's attestations (each
with its token, renewals included), the key release, the validation aggregates, each sealed checkpoint
and the sealed model, with their digests, or an export. Each append signs the new head with the TEE key
of the current attestation, whose private half never leaves this process; the log is saved in the job
record after every append and served with it (``GET /v1/jobs/{id}``, field ``tee_log``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from securetrain.core.attestation.tokens import ValidatedToken
from securetrain.core.audit.tee_log import TeeEventKind, TeeEventLog
from securetrain.tee.attest import TeeKey
from securetrain.tee.gpu_attestation import GpuAttestation


class TeeEvents:
    """One TEE log being written in the agent: appends serialized, each signed by ``key`` once it is attested.

    ``save`` is given the log's stored form after every append (the job record keeps it).
    """

    def __init__(self, log: TeeEventLog, key: TeeKey, save: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._log = log
        self._key = key
        self._save = save
        self._lock = threading.Lock()
        self._key_attested = False

    @classmethod
    def for_job(
        cls, stored: Mapping[str, Any] | None, *, job_id: str, run_id: str, key: TeeKey,
        save: Callable[[dict[str, Any]], None],
    ) -> TeeEvents:  # fmt: skip
        """The job's log: continued from the record after a restart (a new key, introduced by its next
        attestation, signs on), or a new one."""
        log = TeeEventLog.from_json(stored) if stored else TeeEventLog(job_id, run_id)
        return cls(log, key, save)

    def attested(self, token: ValidatedToken, sequence: int, gpu: GpuAttestation | None = None) -> None:
        """An attestation of this log's key (``sequence``: which of the job's attestations): the token, which
        the attester validated and which carries the key, is what makes every later signature the TEE's; where
        the TEE requires a GPU, the GPU claims that attestation verified and relied on, with the service's token."""
        details: dict[str, Any] = {"token": token.raw, "sequence": sequence}
        if gpu is not None:
            details["gpu"] = gpu.summary()
        with self._lock:
            self._key_attested = True
            self._append(TeeEventKind.ATTESTED, details)

    def record(self, kind: TeeEventKind, details: Mapping[str, Any]) -> None:
        """Append a witnessed event (after :meth:`attested`: a head is signed only by an attested key)."""
        with self._lock:
            if not self._key_attested:
                raise RuntimeError(f"a {kind} event before the TEE key was attested")
            self._append(kind, details)

    def head_reference(self) -> dict[str, Any]:
        """The current signed head as a model statement names it."""
        with self._lock:
            if self._log.head is None:
                raise RuntimeError("the TEE log has no head yet")
            return self._log.head.head.reference()

    def origin(self) -> str:
        """The hash of the log's first entry: it names this job across restarts (a restarted job continues
        its log) and no other job (the entry holds the job's first token)."""
        with self._lock:
            if not self._log.entries:
                raise RuntimeError("the TEE log has no entry yet")
            return self._log.entries[0].hash

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return self._log.to_json()

    def _append(self, kind: TeeEventKind, details: Mapping[str, Any]) -> None:
        self._log.append(kind, details, key=self._key.private_key, kid=self._key.kid)
        if self._save is not None:
            self._save(self._log.to_json())
