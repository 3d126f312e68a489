"""The data owner publishes a dataset version: load, keep the training columns, validate, seal, upload, sign.

This is the one path from a data owner's plaintext to a sealed dataset version; the ``data_onboarding`` DAG and
``securetrain dataset publish`` (for owners who do not run Airflow) both call :func:`publish_dataset`, each
resolving the KEK's public key, the storage and the owner's signing key its own way. It runs where plaintext is
allowed (the data owner's zone): the table is read, checked and sealed in memory, and only ciphertext leaves.

Steps, each refusing before anything is uploaded: the source is read (a CSV or Parquet file, or a bundled demo
dataset); only the label and feature columns are kept, so no other column of the owner's table ever reaches
storage; the owner's Great Expectations suite runs on exactly that table with the TEE's own validation
(:func:`securetrain.core.validation.validate`: the same allow-list and rules); the version must not be published
yet (it is once its manifest exists). Then the table is sealed for the KEK in Parquet shards of at most
``shard_rows`` rows, uploaded, and described by a manifest that records the columns and is signed with the
owner's key. The summary carries the manifest's SHA-256 over its signed bytes
(:func:`securetrain.core.signed_documents.signing_bytes`): the digest a contract pins for a dataset version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.contracts.base import DocumentInvalid
from securetrain.core.contracts.job_spec import Columns
from securetrain.core.datasets import BUNDLED, bundled_table, to_parquet
from securetrain.core.errors import ConfigurationError
from securetrain.core.onboarding import DatasetManifest, new_manifest, seal_and_upload
from securetrain.core.sealed import KekPublicKey
from securetrain.core.storage import BlobStore
from securetrain.core.validation import validate

#: A dataset id: what the training DAGs' form accepts, and a single blob-name segment.
DATASET_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: A version: a single blob-name segment (not '.' or '..'); ``latest`` is what the training DAGs resolve.
VERSION = re.compile(r"(?!\.{1,2}$)(?!latest$)[A-Za-z0-9._-]{1,64}")
#: The file formats a source may be in, by suffix.
SOURCE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class VersionExists(ConfigurationError):
    """The dataset already has the version being published; versions are immutable."""


def label_suite(label: str) -> dict[str, Any]:
    """The suite a version is validated with when its owner gives none: every row has a label."""
    return {"name": "onboarding", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": label}}]}  # fmt: skip


def load_source(source: str | Path) -> pa.Table:
    """The plaintext table: a bundled dataset by name (a ``str`` in :data:`BUNDLED`), else a CSV or Parquet file."""
    if isinstance(source, str) and source in BUNDLED:
        return bundled_table(source)
    path = Path(source)
    file_format = SOURCE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise ConfigurationError(f"data source {source!s} is neither a bundled dataset ({', '.join(BUNDLED)}) nor "
                                 f"a file ending in {', '.join(SOURCE_FORMATS)}")  # fmt: skip
    if not path.is_file():
        raise ConfigurationError(f"data source {path} is not a file")
    import pyarrow.csv  # noqa: PLC0415 - only for CSV sources
    import pyarrow.parquet  # noqa: PLC0415

    try:
        return pyarrow.csv.read_csv(path) if file_format == "csv" else pyarrow.parquet.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigurationError(f"cannot read {path} as {file_format}: {exc}") from None


def training_columns(table: pa.Table, label: str, features: Sequence[str] | None) -> tuple[pa.Table, Columns]:
    """``table`` reduced to ``features`` (all but ``label`` when None) and then ``label``, and those columns.

    Refuses columns the table lacks (naming them), the label among the features, repeated or unnamable columns.
    """
    available = table.column_names
    if len(set(available)) != len(available):
        raise ConfigurationError("the source has columns of the same name; rename them")
    chosen = [name for name in available if name != label] if features is None else list(features)
    unknown = [name for name in [*chosen, label] if name not in available]
    if unknown:
        shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
        raise ConfigurationError(f"the source has no column {', '.join(map(repr, dict.fromkeys(unknown)))} "
                                 f"(its columns: {shown})")  # fmt: skip
    if label in chosen:
        raise ConfigurationError(f"the label column {label!r} must not also be a feature")
    try:
        columns = Columns.from_json({"label": label, "features": chosen})
    except DocumentInvalid as exc:
        raise ConfigurationError(f"the training columns: {exc.field}: {exc.reason}") from None
    return table.select([*chosen, label]), columns


@dataclass(frozen=True)
class PublishedDataset:
    """What :func:`publish_dataset` published (JSON-safe: it travels in XCom and is what the command prints)."""

    dataset_id: str
    version: str
    kek_id: str
    #: ``<container>/<dataset id>/<version>/manifest.json``.
    manifest_blob: str
    #: SHA-256 of the manifest's signed bytes: what a contract pins for this version.
    manifest_sha256: str
    label: str
    features: list[str]
    rows: int
    shards: int
    sealed_bytes: int
    #: The suite's aggregates (no rows), as the TEE reports them.
    validation: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def publish_dataset(
    source: str | Path,
    *,
    dataset_id: str,
    version: str,
    label: str,
    features: Sequence[str] | None,
    suite: Mapping[str, Any] | None,
    kek: KekPublicKey,
    owner_key: Ed25519PrivateKey,
    store: BlobStore,
    container: str,
    shard_rows: int | None = None,
) -> PublishedDataset:
    """Publish ``source`` as ``dataset_id`` ``version`` in ``container``, sealed for ``kek`` and signed by ``owner_key``.

    ``features`` None keeps every column but the label; ``suite`` None checks only that every row has a label
    (:func:`label_suite`); ``shard_rows`` None makes one shard. Nothing is uploaded unless the table validates
    and the version has no manifest yet.

    Raises:
        ConfigurationError: a bad id, version, source, column or shard size; the version exists
            (:class:`VersionExists`); the suite is refused or names a column the table lacks.
        DataValidationFailed: the suite failed on the table (its aggregates say how).
    """
    for what, value, pattern in (("dataset id", dataset_id, DATASET_ID), ("version", version, VERSION)):
        if not pattern.fullmatch(value):
            raise ConfigurationError(f"the {what} {value!r} does not match {pattern.pattern}")
    if shard_rows is not None and shard_rows < 1:
        raise ConfigurationError(f"a shard holds at least one row, not {shard_rows}")
    table, columns = training_columns(load_source(source), label, features)
    if table.num_rows == 0:
        raise ConfigurationError(f"data source {source!s} has no rows")
    aggregates = validate(suite if suite is not None else label_suite(label), table.to_pandas())
    store.ensure_container(container)
    manifest_blob = DatasetManifest.blob_name(dataset_id, version)
    if any(info.name == manifest_blob for info in store.list_blobs(container, manifest_blob)):
        raise VersionExists(f"{container}/{manifest_blob} exists: version {version} of {dataset_id} is published, "
                            "and versions are immutable; publish a new one")  # fmt: skip
    # A version is published once its manifest is written, and nothing trusts a shard no manifest lists: shards
    # without one are what an interrupted publication (a retried task) left, and are replaced. The manifest itself
    # is never overwritten.
    rows_per_shard = shard_rows or table.num_rows
    shards = [
        seal_and_upload(to_parquet(table.slice(index * rows_per_shard, rows_per_shard)), kek=kek, store=store,
                        container=container, blob=f"{dataset_id}/{version}/shard-{index:05d}.parquet.sealed",
                        file_format="parquet", context={"dataset_id": dataset_id, "version": version},
                        overwrite=True)  # fmt: skip
        for index in range(math.ceil(table.num_rows / rows_per_shard))
    ]
    manifest = new_manifest(dataset_id, version, kek.kek_id, shards, owner_key, columns=columns)
    ref = manifest.write(store, container)
    return PublishedDataset(
        dataset_id=dataset_id,
        version=version,
        kek_id=kek.kek_id,
        manifest_blob=f"{ref.container}/{ref.manifest}",
        manifest_sha256=manifest.sha256(),
        label=columns.label,
        features=list(columns.features or ()),
        rows=table.num_rows,
        shards=len(shards),
        sealed_bytes=sum(shard.sealed_bytes for shard in shards),
        validation=aggregates,
    )

