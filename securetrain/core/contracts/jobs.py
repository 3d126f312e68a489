"""A job on the trainer agent: its state, and what ``GET /v1/jobs/{id}`` shows of it.

States::

    queued -> attesting -> releasing -> validating -> training -> sealing -> succeeded
       \\-----------\\------------\\------------\\-----------\\---------> failed | cancelled

:class:`JobView` is the job as the API serves it: state and progress, the spec's run id, KEK and
locations, never the nonce. The agent keeps more in its own record (the whole spec, the attestation
sequence); both share :class:`JobStatus`.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import ConfigDict, Field

from securetrain.core.contracts.base import Contract, Items, JsonObject, Lax
from securetrain.core.contracts.job_spec import BlobRef, CheckpointLocation
from securetrain.core.contracts.training import PrivacySpent
from securetrain.core.errors import SecuretrainError


class JobState(enum.StrEnum):
    QUEUED = "queued"
    ATTESTING = "attesting"
    RELEASING = "releasing"
    VALIDATING = "validating"
    TRAINING = "training"
    SEALING = "sealing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def terminal(cls) -> frozenset[JobState]:
        """The states a job ends in; it never leaves them."""
        return frozenset((cls.SUCCEEDED, cls.FAILED, cls.CANCELLED))

    @property
    def finished(self) -> bool:
        return self in JobState.terminal()


class JobError(Contract):
    """Why a job failed: the error's class name, its message, and whether a security check said no.

    ``security_violation`` true means the task must not be retried (attestation refused, release denied,
    a seal failed).
    """

    code: str
    message: str
    security_violation: bool

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobError:
        if isinstance(exc, SecuretrainError):
            return cls(code=type(exc).__name__, message=str(exc), security_violation=exc.security_violation)
        return cls(code="InternalError", message=f"{type(exc).__name__}: {exc}", security_violation=False)


class Transition(Contract):
    """A state the job entered, and when (RFC 3339, UTC): the job's events for the audit log."""

    state: Lax[JobState]
    time: str


class EpochRecord(Contract):
    """One epoch of the training curve: its number, the global step at its end, and its metrics by name.

    The JSON is flat (``{"epoch": 1, "step": 18, "train_loss": 0.41, ...}``); the metrics are the fields
    besides ``epoch`` and ``step``.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float] = Field(init=False)

    epoch: Annotated[int, Field(ge=1)]
    step: Annotated[int, Field(ge=0)]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.__pydantic_extra__)


class KeyRelease(Contract):
    """Key Vault released the KEK ``kek_id`` to this job's TEE key at ``released_at`` (RFC 3339, UTC)."""

    kek_id: str
    released_at: str


class TeeSignature(Contract):
    """A signature made with the TEE's attested key (``securetrain.core.model_provenance.sign_statement``)."""

    algorithm: str
    value: str


class Provenance(Contract):
    """The model statement the TEE signed with its attested key, the signature, and the token naming the key."""

    statement: JsonObject
    tee_signature: TeeSignature
    attestation_token: str


class RecipientCopy(Contract):
    """The final model sealed to one model consumer's key named in the job's contract."""

    party: str
    blob: BlobRef
    sealed_sha256: str
    recipient_thumbprint: str


class JobResult(Contract):
    """What a succeeded job produced: the sealed model, final metrics, where it trained, and its provenance."""

    model: BlobRef
    metrics: dict[str, float]
    device: str
    tee_type: str
    epochs_completed: int
    steps_completed: int
    provenance: Provenance
    #: The ε a DP-SGD run spent (the accountant's), its δ and accountant; absent without differential privacy.
    privacy: PrivacySpent | None = None
    #: The consumers' copies of the model, sealed to the recipient keys the contract names.
    recipients: Items[RecipientCopy] = ()


class JobStatus(Contract):
    """A job's state and progress: what the agent records and serves alike."""

    job_id: str
    run_id: str
    state: Lax[JobState] = JobState.QUEUED
    epoch: int = 0
    step: int = 0
    #: The metrics of the last completed epoch.
    metrics: dict[str, float] = {}
    #: The last sealed checkpoint's blob name (in the spec's checkpoint container).
    last_checkpoint: str | None = None
    #: The expectation suite's aggregates (never rows): ``securetrain.core.validation``.
    validation: JsonObject | None = None
    #: The training curve the run report plots.
    history: Items[EpochRecord] = ()
    key_release: KeyRelease | None = None
    transitions: Items[Transition] = ()
    #: What the TEE witnessed, signed with its attested key (``securetrain.core.audit.tee_log``).
    tee_log: JsonObject | None = None
    result: JobResult | None = None
    error: JobError | None = None
    cancel_requested: bool = False
    created_at: float
    updated_at: float


class JobView(JobStatus):
    """``GET /v1/jobs/{id}``: the job's status, and the spec's KEK and output locations (not its nonce)."""

    kek_id: str
    output: BlobRef
    checkpoints: CheckpointLocation


class JobList(Contract):
    """``GET /v1/jobs``: every job on the agent."""

    jobs: Items[JobView]
