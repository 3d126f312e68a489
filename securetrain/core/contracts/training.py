"""The interface between the agent (attest, release keys, report progress) and the training side::

    run_training(spec: TrainingSpec, keys: JobKeys, store: BlobStore,
                 progress: ProgressSink, cancel: threading.Event) -> TrainingResult

(``securetrain.tee.training.run_training``). Nothing here holds plaintext training data; :class:`JobKeys`
holds the released KEK, so it is never persisted, logged or put into a response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field

from securetrain.core.contracts.base import Contract, Frozen, Items, Omittable
from securetrain.core.contracts.job_spec import (
    BlobName,
    BlobRef,
    CheckpointLocation,
    Columns,
    ContainerName,
    Hyperparameters,
    JobSpec,
    JobSpecError,
    ModelSpec,
    PrivacyRequest,
)
from securetrain.core.errors import SecuretrainError, SecurityViolation
from securetrain.core.sealed import KekPrivateKey, KekPublicKey
from securetrain.core.suite_policy import ExpectationSuite


class DatasetShard(Contract):
    """One sealed shard of training data and the seal context it must carry (both from the owner's manifest)."""

    container: ContainerName
    blob: BlobName
    format: Literal["parquet", "safetensors", "arrow"]
    context: Frozen[dict[str, str]]
    #: The KEK its owner sealed it for (the manifest's); None: the job's own KEK.
    kek_id: Omittable[str]


class TrainingSpec(Contract):
    """Everything ``run_training`` needs besides keys and storage: a job's plan over its resolved shards.

    The TEE builds it (:meth:`for_job`) once it has resolved the job's datasets into shards from the owners'
    signed manifests. ``run_training`` resumes from the newest checkpoint under ``checkpoints`` that opens
    and verifies, so calling it again for the same spec after a crash continues the run.
    """

    run_id: str
    datasets: Items[DatasetShard]
    columns: Columns
    model: ModelSpec
    hyperparameters: Hyperparameters
    expectation_suite: ExpectationSuite | None
    checkpoints: CheckpointLocation
    output: BlobRef
    #: DP-SGD terms, or None to train without differential privacy.
    privacy: PrivacyRequest | None = None
    #: The digest of the contract the job runs under: the sealed model names it, so an export is held to it.
    contract: str | None = None
    #: The least noise multiplier a DP-SGD plan may use; a plan below it is refused before the first step.
    min_noise_multiplier: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0

    @classmethod
    def for_job(cls, spec: JobSpec, shards: Sequence[DatasetShard]) -> TrainingSpec:
        """The training spec of ``spec`` over ``shards`` (resolved by the TEE from the signed manifests).

        Raises:
            JobSpecError: the shards mix formats, repeat, or the outputs would overwrite one.
        """
        formats = {shard.format for shard in shards}
        if len(formats) != 1:
            raise JobSpecError("datasets", f"the shards must have exactly one format, got {sorted(formats)}")
        seen: set[tuple[str, str]] = set()
        for shard in shards:
            if (shard.container, shard.blob) in seen:
                raise JobSpecError("datasets", f"shard {shard.container}/{shard.blob} is listed twice")
            seen.add((shard.container, shard.blob))
        output, checkpoints = spec.output, spec.checkpoints
        if (output.container, output.blob) in seen:
            raise JobSpecError("output.blob", "must not overwrite a dataset shard")
        if any(s.container == checkpoints.container and s.blob.startswith(checkpoints.prefix) for s in shards):
            raise JobSpecError("checkpoints.prefix", "must not hold a dataset shard")
        return cls(
            run_id=spec.run_id, datasets=tuple(shards), columns=spec.columns, model=spec.model,
            hyperparameters=spec.hyperparameters, expectation_suite=spec.expectation_suite,
            checkpoints=spec.checkpoints, output=spec.output, privacy=spec.privacy,
            contract=spec.contract.digest if spec.contract is not None else None,
        )  # fmt: skip


class PrivacySpent(Contract):
    """What a DP-SGD run spent, as its accountant computed it from the noise, sampling rate and steps taken."""

    epsilon: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    delta: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    accountant: Literal["prv", "rdp"]
    noise_multiplier: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    sample_rate: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
    steps: Annotated[int, Field(ge=0)]
    max_grad_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class TrainingResult(Contract):
    """What a finished training run reports back: only sealed locations and aggregates, no data."""

    model_blob: BlobRef
    metrics: dict[str, float]
    #: The device it trained on (``cuda: <name>`` or ``cpu``).
    device: str
    epochs_completed: Annotated[int, Field(ge=0)]
    steps_completed: Annotated[int, Field(ge=0)]
    #: The privacy a DP-SGD run spent; None without differential privacy.
    privacy: PrivacySpent | None = None


class DatasetKeyMissing(SecuretrainError):
    """A shard is sealed for a KEK the job did not have released."""


@dataclass(frozen=True, repr=False)
class JobKeys:
    """The released KEKs of one job: the job's KEK (its private half opens datasets sealed for it and the
    job's checkpoints, its public half seals outputs) and, in a run that pools several owners' data, each
    other owner's KEK, which opens only that owner's shards."""

    kek_private: KekPrivateKey
    kek_public: KekPublicKey
    #: Other data owners' released KEKs, by their versioned key ids.
    dataset_keks: Mapping[str, KekPrivateKey] = field(default_factory=dict)

    @classmethod
    def from_released(
        cls, kek_private: KekPrivateKey, kek_id: str, dataset_keks: Mapping[str, KekPrivateKey] | None = None
    ) -> JobKeys:
        """Keys for a KEK released under ``kek_id`` (the versioned key URL the outputs will name)."""
        return cls(kek_private, KekPublicKey(kek_id, kek_private.private_key.public_key()), dict(dataset_keks or {}))

    def for_shard(self, shard: DatasetShard) -> KekPrivateKey:
        """The released KEK that opens ``shard`` (the key it carries must still match the header's: the seal checks)."""
        # Imported here: the Key Vault SDK is heavy, and this module is part of every DAG file's imports.
        from securetrain.core.keyvault import same_key  # noqa: PLC0415
        if shard.kek_id is None or same_key(shard.kek_id, self.kek_public.kek_id):
            return self.kek_private
        for kek_id, key in self.dataset_keks.items():
            if same_key(shard.kek_id, kek_id):
                return key
        raise DatasetKeyMissing(f"{shard.container}/{shard.blob} is sealed for {shard.kek_id}, which this job has not released")

    def __repr__(self) -> str:
        # Never print key material, even by accident in a log line or traceback.
        others = f", dataset_keks={sorted(self.dataset_keks)}" if self.dataset_keks else ""
        return f"JobKeys(kek_id={self.kek_public.kek_id!r}, thumbprint={self.kek_public.thumbprint[:16]}…{others})"


class DataValidationFailed(SecuretrainError):
    """The expectation suite failed on the decrypted data; ``aggregates`` say which expectations and how."""

    def __init__(self, message: str, aggregates: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.aggregates = aggregates


class PrivacyTermsRefused(SecurityViolation):
    """A DP-SGD plan falls outside the privacy terms the TEE enforces; ``term`` names the term it breaks."""

    def __init__(self, term: str, message: str) -> None:
        super().__init__(f"privacy term {term!r}: {message}")
        self.term = term


class TrainingCancelled(SecuretrainError):
    """``run_training`` stopped at a safe point because its cancel event was set."""


class ProgressSink(Protocol):
    """How the training side reports progress to the agent (which serves it on ``GET /v1/jobs/{id}``).

    Calls come from the training thread; an implementation must be quick and must not raise except to
    stop the job (the agent raises from ``epoch_done`` when re-attestation failed).
    """

    def validation_done(self, aggregates: Mapping[str, Any]) -> None:
        """The expectation suite passed (or there was none); ``aggregates`` are its aggregate results only."""

    def epoch_done(self, epoch: int, step: int, metrics: Mapping[str, float], checkpoint_blob: str) -> None:
        """Epoch ``epoch`` (1-based) finished at global ``step`` and its sealed checkpoint is uploaded."""

    def sealing_model(self) -> None:
        """Training is over; the final model is being sealed and uploaded."""


class NullProgress:
    """A :class:`ProgressSink` that reports nothing, for training whose progress is nobody's to follow: a
    data-parallel worker other than the leader (the leader's reports are the job's) and a benchmark (nobody polls
    it). Training always reports to a sink, so that no step of it has to ask whether anyone listens.
    """

    def validation_done(self, aggregates: Mapping[str, Any]) -> None:
        pass

    def epoch_done(self, epoch: int, step: int, metrics: Mapping[str, float], checkpoint_blob: str) -> None:
        pass

    def sealing_model(self) -> None:
        pass
