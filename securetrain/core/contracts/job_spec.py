"""The job spec: what Airflow asks the trainer to do, and the contract between orchestration and training.

A job spec arrives as JSON on ``POST /v1/jobs``. :class:`JobSpec` says what is allowed: every object refuses
fields it does not name, names and identifiers match their patterns, numbers lie within their bounds, and
types are strict (an integer is a JSON integer, not ``1.0``; a number is finite). :meth:`JobSpec.from_json`
raises :class:`JobSpecError` naming the first offending field, which the agent answers with ``400``.
``model.params`` holds JSON scalars and flat lists of numbers (the model builder it names rejects
parameters it does not know); the expectation suite is data checked against an allow-list
(:class:`securetrain.core.suite_policy.ExpectationSuite`), never evaluated. The spec is read-only once
validated: its free-form parts (``model.params``, the suite's arguments) are frozen too.

Airflow builds and checks the spec before it submits it; the agent checks it again, whatever Airflow did.
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PlainValidator, WithJsonSchema, model_validator

from securetrain.core.contracts.base import Contract, DocumentInvalid, Frozen, Items, Omittable, matching, refusal
from securetrain.core.suite_policy import ExpectationSuite

#: The Airflow run id (``job_run_id``), and the job's name on the agent.
RUN_ID = r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,249}"
#: A fresh random value: base64url or hex, at least 128 bits.
NONCE = r"[A-Za-z0-9_-]{22,200}"
#: A versioned Key Vault key URL, https://VAULT/keys/NAME/VERSION.
KEK_ID = r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/keys/[A-Za-z0-9-]{1,127}/[A-Za-z0-9]{1,64}"
#: Azure Blob Storage's container names: 3-63 lowercase letters, digits and single hyphens.
CONTAINER = r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]"
#: Blob names: no leading slash, no empty, '.' or '..' path segments, no control characters or backslashes,
#: so that a name means the same thing to every tool that turns it into a path or URL.
BLOB_NAME = r"(?!/)(?!.*//)(?!(.*/)?\.\.?(/|$))[^\x00-\x1f\x7f\\]{1,1024}"
BLOB_PREFIX = r"(?!/)(?!.*//)(?!(.*/)?\.\.?(/|$))[^\x00-\x1f\x7f\\]{1,1023}/"
#: A column or tensor name.
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_.-]{0,127}"
#: A registered model builder's name, and the names of its parameters.
MODEL_NAME = r"[a-z][a-z0-9_]{0,63}"
#: A SHA-256 digest in lowercase hex (a contract's digest names it).
SHA256_HEX = r"[0-9a-f]{64}"

RunId = matching(RUN_ID, "An Airflow run id: letters, digits and ._:+-, at most 250 characters.")
Nonce = matching(NONCE, "Fresh random value, base64url or hex, 22-200 characters (at least 128 bits).")
KekId = matching(KEK_ID, "A versioned Key Vault key URL: https://VAULT/keys/NAME/VERSION.")
ContainerName = matching(CONTAINER, "Storage container name (Azure rules: 3-63 lowercase letters, digits, single hyphens).")
BlobName = matching(BLOB_NAME, "Blob name inside the container.")
BlobPrefix = matching(BLOB_PREFIX, "Blob name prefix, ending in '/'.")
Identifier = matching(IDENTIFIER, "A name of letters, digits, '_', '.' and '-', not starting with a digit.")
ModelName = matching(MODEL_NAME, "Lowercase letters, digits and '_', starting with a letter.")
ContractDigest = matching(SHA256_HEX, "A contract's digest: SHA-256 of its canonical JSON, 64 lowercase hex digits.")
MAX_PARAM_TEXT = 128
MAX_PARAM_NUMBERS = 64


def _number(value: Any) -> bool:
    """A JSON number: any integer (not a boolean), or a finite float."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _param(value: Any) -> Any:
    """A builder parameter: a number, a boolean, a short string, or a flat list of numbers (layer widths)."""
    if isinstance(value, bool) or _number(value) or (isinstance(value, str) and len(value) <= MAX_PARAM_TEXT):
        return value
    if isinstance(value, list | tuple) and len(value) <= MAX_PARAM_NUMBERS:
        for index, item in enumerate(value):
            if not _number(item):
                raise refusal(f"{item!r} is not a finite number", index)
        return value
    raise refusal(
        f"must be a finite number, true or false, a string of at most {MAX_PARAM_TEXT} characters, or a list of at "
        f"most {MAX_PARAM_NUMBERS} finite numbers"
    )


ParamValue = Annotated[
    bool | int | float | str | tuple[int | float, ...],
    PlainValidator(_param),
    WithJsonSchema({"type": ["number", "boolean", "string", "array"], "maxLength": MAX_PARAM_TEXT,
                    "maxItems": MAX_PARAM_NUMBERS, "items": {"type": "number"}}),
]  # fmt: skip


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(names)) != len(names):
        raise refusal("names a column twice")
    return names


class DatasetRef(Contract):
    """Where a dataset version's manifest lies (``<dataset>/<version>/manifest.json``): what a job names.

    The TEE reads each manifest, checks the owner's signature and opens exactly the shards it lists, under
    the seal contexts it names; shards and contexts never come from the job spec.
    """

    container: ContainerName
    manifest: BlobName


class BlobRef(Contract):
    """One blob in storage."""

    container: ContainerName
    blob: BlobName


class CheckpointLocation(Contract):
    """Container and prefix under which the per-epoch sealed checkpoints are written."""

    container: ContainerName
    prefix: BlobPrefix


class Columns(Contract):
    """Which columns (Parquet) or tensors (safetensors) hold the label and the features."""

    label: Identifier
    #: The feature columns; all but the label when absent.
    features: Omittable[Annotated[Items[Identifier], Field(min_length=1, max_length=100000), AfterValidator(_unique)]]


class ModelSpec(Contract):
    """A model registered in the trainer's model registry (e.g. 'mlp', 'cnn') and its builder's parameters.

    The named builder rejects parameters it does not know.
    """

    name: ModelName
    params: Frozen[Annotated[dict[ModelName, ParamValue], Field(max_length=64)]] = Field(default={}, validate_default=True)


class Hyperparameters(Contract):
    epochs: Annotated[int, Field(ge=1, le=10000)]
    batch_size: Annotated[int, Field(ge=1, le=1048576)]
    learning_rate: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]
    #: Seeds every random generator, so a run (and a resumed run) is reproducible.
    seed: Annotated[int, Field(ge=0, le=4294967295)]
    optimizer: Literal["adam", "sgd"] = "adam"


class ContractRef(Contract):
    """The signed contract a job runs under: ``<digest>/contract.json`` in ``container``, its revocations
    under ``<digest>/revocations/`` (docs/governance.md). The TEE reads it, checks that its digest is
    ``digest`` and that every party signed it, and refuses a job outside its terms before any key is asked for.
    """

    container: ContainerName
    digest: ContractDigest


class PrivacyRequest(Contract):
    """Differential privacy the job asks for: DP-SGD spending at most ``epsilon`` (with ``delta``), each
    sample's gradient clipped to ``max_grad_norm``, the spend computed by ``accountant`` (Opacus's PRV or RDP).
    The contract bounds every one of these; the TEE refuses an ``epsilon`` over what the budget has left."""

    epsilon: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
    delta: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    max_grad_norm: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
    accountant: Literal["prv", "rdp"] = "prv"


class JobSpecError(DocumentInvalid):
    """A job spec is malformed; ``field`` is the dotted path of what is wrong (``datasets[0].manifest``)."""

    document = "job spec"


def job_id_for_run(run_id: str) -> str:
    """The agent's job id for ``run_id`` (the orchestrator computes it to find a job it submitted)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


class JobSpec(Contract):
    """A job: the attestation inputs (nonce, KEK id), the datasets' manifests, and the training plan."""

    #: The Airflow run id. Submitting the same run id again returns the existing job, so Airflow may
    #: retry a submit safely.
    run_id: RunId
    #: Fresh random value from the orchestrator; it goes into the attestation runtime data and must come
    #: back in the token's claims.
    nonce: Nonce
    #: The KEK: released after attestation; datasets, checkpoints and the model are sealed to it.
    kek_id: KekId
    datasets: Annotated[Items[DatasetRef], Field(min_length=1, max_length=16)]
    columns: Columns
    model: ModelSpec
    hyperparameters: Hyperparameters
    #: Run inside the TEE on the decrypted data before training; only aggregates of its results leave.
    expectation_suite: Omittable[ExpectationSuite]
    #: Where the sealed per-epoch checkpoints go; a restarted job resumes from here.
    checkpoints: CheckpointLocation
    #: Where the sealed final model goes.
    output: BlobRef
    #: The contract the job runs under; without one, only KEKs whose release policy names no contract open.
    contract: Omittable[ContractRef]
    #: Train with DP-SGD under these terms (a contract whose datasets require DP refuses a job without them).
    privacy: Omittable[PrivacyRequest]

    invalid = JobSpecError

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        """Rules across fields."""
        if len(set(self.datasets)) != len(self.datasets):
            raise refusal("a dataset manifest is listed twice", "datasets")
        if self.columns.features is not None and self.columns.label in self.columns.features:
            raise refusal("the label column must not also be a feature", "columns", "features")
        output, checkpoints = self.output, self.checkpoints
        if output.container == checkpoints.container and output.blob.startswith(checkpoints.prefix):
            # Resume picks the newest blob under the checkpoint prefix; the model must not be mistaken for one.
            raise refusal(f"must not lie under the checkpoint prefix {checkpoints.prefix!r}", "output", "blob")
        if any((output.container, output.blob) == (ref.container, ref.manifest) for ref in self.datasets):
            raise refusal("must not overwrite a dataset manifest", "output", "blob")
        return self

    @property
    def job_id(self) -> str:
        """The agent's id for this job: derived from the run id, so a resubmit names the same job."""
        return job_id_for_run(self.run_id)
