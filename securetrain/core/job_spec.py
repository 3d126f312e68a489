"""The job spec: what Airflow asks the trainer to do, and the contract between orchestration and training.

A job spec arrives as JSON on ``POST /v1/jobs``. :data:`JOB_SPEC_SCHEMA` (JSON Schema 2020-12,
``additionalProperties: false`` on every object whose keys we define) says what is allowed;
:meth:`JobSpec.from_json` checks it and raises :class:`JobSpecError` naming the first offending field,
which the agent answers with ``400``. Types are strict (:func:`securetrain.core.json_input.strict_validator`: an
integer is a JSON integer, not ``1.0``; a number is finite). ``model.params`` holds JSON scalars and flat
lists of numbers (the model builder it names rejects parameters it does not know); the expectation suite
is data checked against an allow-list (:mod:`securetrain.core.suite_policy`), never evaluated.

The rest of this module is the interface between the agent (attest, release keys, report progress) and
the training side (``securetrain.tee.training.run_training``)::

    run_training(spec: TrainingSpec, keys: JobKeys, store: BlobStore,
                 progress: ProgressSink, cancel: threading.Event) -> TrainingResult

Nothing here holds plaintext training data; :class:`JobKeys` holds the released KEK, so it is never
persisted, logged or put into a response.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, Protocol

from jsonschema.exceptions import ValidationError

from securetrain.core.errors import ConfigurationError, SecuretrainError
from securetrain.core.json_input import strict_validator
from securetrain.core.onboarding import DatasetRef
from securetrain.core.sealed import KekPrivateKey, KekPublicKey
from securetrain.core.suite_policy import SUITE_SCHEMA, SuiteRefused, check_suite

# Azure Blob Storage naming rules: containers 3-63 lowercase letters, digits and single hyphens.
_CONTAINER = {
    "type": "string",
    "pattern": r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$",
    "description": "Storage container name (Azure rules: 3-63 lowercase letters, digits, single hyphens).",
}
# Blob names: no leading slash, no empty, '.' or '..' path segments, no control characters, so that a
# name means the same thing to every tool that turns it into a path or URL.
_BLOB_NAME = r"^(?!/)(?!.*//)(?!(.*/)?\.\.?(/|$))[^\x00-\x1f\x7f\\]{1,1024}$"
_BLOB = {"type": "string", "pattern": _BLOB_NAME, "description": "Blob name inside the container."}
_PREFIX = {
    "type": "string",
    "pattern": r"^(?!/)(?!.*//)(?!(.*/)?\.\.?(/|$))[^\x00-\x1f\x7f\\]{1,1023}/$",
    "description": "Blob name prefix, ending in '/'.",
}
_IDENTIFIER = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"}

JOB_SPEC_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://securetrain.example/schemas/job-spec-v1.json",
    "title": "securetrain trainer job spec",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "run_id",
        "nonce",
        "kek_id",
        "datasets",
        "columns",
        "model",
        "hyperparameters",
        "checkpoints",
        "output",
    ],
    "properties": {
        "run_id": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,249}$",
            "description": (
                "The Airflow run id. Submitting the same run id again returns the existing job, so "
                "Airflow may retry a submit safely."
            ),
        },
        "nonce": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9_-]{22,200}$",
            "description": (
                "Fresh random value from the orchestrator (base64url or hex, at least 128 bits); it goes "
                "into the attestation runtime data and must come back in the token's claims."
            ),
        },
        "kek_id": {
            "type": "string",
            "pattern": r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/keys/[A-Za-z0-9-]{1,127}/[A-Za-z0-9]{1,64}$",
            "description": (
                "Versioned Key Vault key URL of the KEK (https://VAULT/keys/NAME/VERSION): the key that "
                "is released after attestation and to which datasets, checkpoints and the model are sealed."
            ),
        },
        "datasets": {
            "type": "array",
            "minItems": 1,
            "maxItems": 16,
            "description": (
                "The dataset versions to train on, each named by its manifest, which the data owner signed. The "
                "TEE reads each manifest, checks the owner's signature and opens exactly the shards it lists, "
                "under the seal contexts it names; shards and contexts never come from the job spec."
            ),
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["container", "manifest"],
                "properties": {
                    "container": _CONTAINER,
                    "manifest": {**_BLOB, "description": "The manifest's blob name (<dataset>/<version>/manifest.json)."},
                },
            },
        },
        "columns": {
            "type": "object",
            "additionalProperties": False,
            "required": ["label"],
            "description": "Which columns (Parquet) or tensors (safetensors) hold the label and the features.",
            "properties": {
                "label": {**_IDENTIFIER, "description": "Name of the label column or tensor."},
                "features": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 100000,
                    "uniqueItems": True,
                    "items": _IDENTIFIER,
                    "description": "Feature columns or tensors; all but the label when absent.",
                },
            },
        },
        "model": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": r"^[a-z][a-z0-9_]{0,63}$",
                    "description": "A model registered in the trainer's model registry (e.g. 'mlp', 'cnn').",
                },
                "params": {
                    "type": "object",
                    "maxProperties": 64,
                    "propertyNames": {"pattern": r"^[a-z][a-z0-9_]{0,63}$"},
                    # Scalars and flat lists of numbers (layer widths): nothing nested, nothing unbounded.
                    "additionalProperties": {
                        "type": ["number", "boolean", "string", "array"],
                        "maxLength": 128,
                        "maxItems": 64,
                        "items": {"type": "number"},
                    },
                    "description": "Builder parameters; the named builder rejects any it does not know.",
                },
            },
        },
        "hyperparameters": {
            "type": "object",
            "additionalProperties": False,
            "required": ["epochs", "batch_size", "learning_rate", "seed"],
            "properties": {
                "epochs": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "Epochs to train."},
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 1048576, "description": "Rows per batch."},
                "learning_rate": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 10,
                    "description": "Optimizer learning rate.",
                },
                "seed": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 4294967295,
                    "description": "Seeds every random generator, so a run (and a resumed run) is reproducible.",
                },
                "optimizer": {"enum": ["adam", "sgd"], "default": "adam", "description": "Optimizer."},
            },
        },
        "expectation_suite": SUITE_SCHEMA,
        "checkpoints": {
            "type": "object",
            "additionalProperties": False,
            "required": ["container", "prefix"],
            "description": "Where the sealed per-epoch checkpoints go; a restarted job resumes from here.",
            "properties": {"container": _CONTAINER, "prefix": _PREFIX},
        },
        "output": {
            "type": "object",
            "additionalProperties": False,
            "required": ["container", "blob"],
            "description": "Where the sealed final model goes.",
            "properties": {"container": _CONTAINER, "blob": _BLOB},
        },
    },
}

_VALIDATOR = strict_validator(JOB_SPEC_SCHEMA)


class JobSpecError(ConfigurationError):
    """A job spec is malformed; ``field`` is the dotted path of what is wrong (``datasets[0].blob``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"job spec field {field!r}: {reason}")
        self.field = field
        self.reason = reason


class DataValidationFailed(SecuretrainError):
    """The expectation suite failed on the decrypted data; ``aggregates`` say which expectations and how."""

    def __init__(self, message: str, aggregates: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.aggregates = aggregates


class TrainingCancelled(SecuretrainError):
    """``run_training`` stopped at a safe point because its cancel event was set."""


def _field_path(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the job spec)"


def _error_for(error: ValidationError) -> JobSpecError:
    """The most specific, readable error for one schema violation."""
    where = list(error.absolute_path)
    if error.validator == "additionalProperties":
        unexpected = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return JobSpecError(_field_path([*where, unexpected[0]]), "unknown field; remove it (see the job spec schema)")
    if error.validator == "required":
        missing = next(name for name in error.validator_value if name not in error.instance)
        return JobSpecError(_field_path([*where, missing]), "required field is missing")
    if error.validator == "pattern":
        description = error.schema.get("description", "")
        return JobSpecError(_field_path(where), f"{error.instance!r} is not allowed here. {description}".strip())
    return JobSpecError(_field_path(where), error.message)


def _frozen(value: Any) -> Any:
    """A read-only deep copy of JSON data, so a spec cannot change after it was validated."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    return value


def _thawed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thawed(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thawed(item) for item in value]
    return value


@dataclass(frozen=True)
class BlobRef:
    """One blob in storage."""

    container: str
    blob: str


@dataclass(frozen=True)
class DatasetShard:
    """One sealed shard of training data and the seal context it must carry (both from the owner's manifest)."""

    container: str
    blob: str
    format: Literal["parquet", "safetensors", "arrow"]
    context: Mapping[str, str]


@dataclass(frozen=True)
class Columns:
    """The label column (or tensor) and the feature columns; ``features`` None means all but the label."""

    label: str
    features: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A registered model builder's name and its parameters."""

    name: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    optimizer: Literal["adam", "sgd"] = "adam"


@dataclass(frozen=True)
class CheckpointLocation:
    """Container and prefix under which the per-epoch sealed checkpoints are written."""

    container: str
    prefix: str


@dataclass(frozen=True)
class TrainingSpec:
    """The training part of a job spec: everything ``run_training`` needs besides keys and storage.

    The TEE builds it (:meth:`JobSpec.training_on`) once it has resolved the job's datasets into shards
    from the owners' signed manifests. ``run_training`` resumes from the newest checkpoint under ``checkpoints`` that opens and verifies,
    so calling it again for the same spec after a crash continues the run.
    """

    run_id: str
    datasets: tuple[DatasetShard, ...]
    columns: Columns
    model: ModelSpec
    hyperparameters: Hyperparameters
    expectation_suite: Mapping[str, Any] | None
    checkpoints: CheckpointLocation
    output: BlobRef


def job_id_for_run(run_id: str) -> str:
    """The agent's job id for ``run_id`` (the orchestrator computes it to find a job it submitted)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec: the attestation inputs (nonce, KEK id), the datasets' manifests, and the plan.

    ``plan`` is the training spec without shards (its ``datasets`` is empty): the shards come from the
    data owners' signed manifests, which only the TEE resolves (:meth:`training_on`).
    """

    run_id: str
    nonce: str
    kek_id: str
    datasets: tuple[DatasetRef, ...]
    plan: TrainingSpec

    @property
    def job_id(self) -> str:
        """The agent's id for this job: derived from the run id, so a resubmit names the same job."""
        return job_id_for_run(self.run_id)

    @classmethod
    def from_json(cls, document: Any) -> JobSpec:
        """Validate a decoded JSON document; :class:`JobSpecError` names the first field that is wrong."""
        errors = sorted(_VALIDATOR.iter_errors(document), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
        if errors:
            raise _error_for(errors[0])
        if "expectation_suite" in document:
            try:
                check_suite(document["expectation_suite"])
            except SuiteRefused as exc:
                raise JobSpecError(exc.field, exc.reason) from None
        spec = cls._build(document)
        spec._check_consistent()
        return spec

    @classmethod
    def _build(cls, doc: Mapping[str, Any]) -> JobSpec:
        columns = doc["columns"]
        model = doc["model"]
        suite = doc.get("expectation_suite")
        plan = TrainingSpec(
            run_id=doc["run_id"],
            datasets=(),
            columns=Columns(columns["label"], tuple(columns["features"]) if "features" in columns else None),
            model=ModelSpec(model["name"], _frozen(model.get("params", {}))),
            hyperparameters=Hyperparameters(**doc["hyperparameters"]),
            expectation_suite=_frozen(suite) if suite is not None else None,
            checkpoints=CheckpointLocation(**doc["checkpoints"]),
            output=BlobRef(**doc["output"]),
        )
        datasets = tuple(DatasetRef(entry["container"], entry["manifest"]) for entry in doc["datasets"])
        return cls(run_id=doc["run_id"], nonce=doc["nonce"], kek_id=doc["kek_id"], datasets=datasets, plan=plan)

    def _check_consistent(self) -> None:
        """Rules across fields that JSON Schema cannot say."""
        if len(set(self.datasets)) != len(self.datasets):
            raise JobSpecError("datasets", "a dataset manifest is listed twice")
        features = self.plan.columns.features
        if features is not None and self.plan.columns.label in features:
            raise JobSpecError("columns.features", "the label column must not also be a feature")
        output, checkpoints = self.plan.output, self.plan.checkpoints
        if output.container == checkpoints.container and output.blob.startswith(checkpoints.prefix):
            # Resume picks the newest blob under the checkpoint prefix; the model must not be mistaken for one.
            raise JobSpecError("output.blob", f"must not lie under the checkpoint prefix {checkpoints.prefix!r}")
        if any((output.container, output.blob) == (ref.container, ref.manifest) for ref in self.datasets):
            raise JobSpecError("output.blob", "must not overwrite a dataset manifest")

    def training_on(self, shards: Sequence[DatasetShard]) -> TrainingSpec:
        """The training spec over ``shards`` (resolved by the TEE from the signed manifests).

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
        output, checkpoints = self.plan.output, self.plan.checkpoints
        if (output.container, output.blob) in seen:
            raise JobSpecError("output.blob", "must not overwrite a dataset shard")
        if any(s.container == checkpoints.container and s.blob.startswith(checkpoints.prefix) for s in shards):
            raise JobSpecError("checkpoints.prefix", "must not hold a dataset shard")
        return replace(self.plan, datasets=tuple(shards))

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON document that :meth:`from_json` accepts (for the agent's job record)."""
        t = self.plan
        document: dict[str, Any] = {
            "run_id": self.run_id,
            "nonce": self.nonce,
            "kek_id": self.kek_id,
            "datasets": [ref.to_json() for ref in self.datasets],
            "columns": {"label": t.columns.label}
            | ({"features": list(t.columns.features)} if t.columns.features is not None else {}),
            "model": {"name": t.model.name, "params": _thawed(t.model.params)},
            "hyperparameters": {
                "epochs": t.hyperparameters.epochs,
                "batch_size": t.hyperparameters.batch_size,
                "learning_rate": t.hyperparameters.learning_rate,
                "seed": t.hyperparameters.seed,
                "optimizer": t.hyperparameters.optimizer,
            },
            "checkpoints": {"container": t.checkpoints.container, "prefix": t.checkpoints.prefix},
            "output": {"container": t.output.container, "blob": t.output.blob},
        }
        if t.expectation_suite is not None:
            document["expectation_suite"] = _thawed(t.expectation_suite)
        return document


@dataclass(frozen=True, repr=False)
class JobKeys:
    """The released KEK of one job: the private half opens datasets, the public half seals outputs."""

    kek_private: KekPrivateKey
    kek_public: KekPublicKey

    @classmethod
    def from_released(cls, kek_private: KekPrivateKey, kek_id: str) -> JobKeys:
        """Keys for a KEK released under ``kek_id`` (the versioned key URL the outputs will name)."""
        return cls(kek_private, KekPublicKey(kek_id, kek_private.private_key.public_key()))

    def __repr__(self) -> str:
        # Never print key material, even by accident in a log line or traceback.
        return f"JobKeys(kek_id={self.kek_public.kek_id!r}, thumbprint={self.kek_public.thumbprint[:16]}…)"


@dataclass(frozen=True)
class TrainingResult:
    """What a finished training run reports back: only sealed locations and aggregates, no data."""

    model_blob: BlobRef
    metrics: Mapping[str, float]
    device: str
    epochs_completed: int
    steps_completed: int


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
