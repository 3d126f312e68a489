"""A data owner publishes a dataset version (securetrain/core/dataset_publishing.py): a CSV, Parquet or bundled source
reduced to its label and feature columns, validated, sealed in shards, uploaded to the stack's storage and described
by a signed manifest that records the columns. Unknown columns, data that fails its suite and a published version
are refused before anything is uploaded; shards an interrupted publication left are replaced. The shards are sealed for a test KEK whose private half the test holds,
so it can open them and see exactly which rows and columns went out."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core import signed_documents
from securetrain.core.contracts.job_spec import Columns
from securetrain.core.contracts.training import DataValidationFailed
from securetrain.core.dataset_publishing import VersionExists, load_source, publish_dataset, training_columns
from securetrain.core.datasets import bundled_table, to_parquet
from securetrain.core.errors import ConfigurationError
from securetrain.core.onboarding import DatasetManifest, SealedShard, new_manifest
from securetrain.core.sealed import KekPrivateKey, KekPublicKey, unseal
from securetrain.core.signed_documents import SignatureInvalid

CONTAINER = "datasets"
OWNER_KEY = Ed25519PrivateKey.generate()
#: A table an owner keeps more in than they train on: an id and a free-text note that must never be uploaded.
PATIENTS = pa.table({"patient_id": ["p1", "p2", "p3", "p4", "p5"], "age": [41, 57, 33, 68, 50],
                     "bmi": [22.5, 31.0, 27.2, 24.8, 29.9], "note": ["a", "b", "c", "d", "e"],
                     "outcome": [0, 1, 0, 1, 1]})  # fmt: skip
#: A shard entry, for manifests that are only signed and read back here.
SHARD = SealedShard(container=CONTAINER, blob="d/v1/shard-00000.parquet.sealed", format="parquet",
                    context={"dataset_id": "d", "version": "v1", "kind": "dataset", "format": "parquet"},
                    kek_id="https://vault.securetrain.test/keys/kek/1", plaintext_sha256="0" * 64, plaintext_bytes=1,
                    sealed_bytes=2)  # fmt: skip


@pytest.fixture
def csv_source(tmp_path: Path) -> Path:
    path = tmp_path / "patients.csv"
    pyarrow.csv.write_csv(PATIENTS, path)
    return path


@pytest.fixture
def parquet_source(tmp_path: Path) -> Path:
    path = tmp_path / "patients.parquet"
    path.write_bytes(to_parquet(PATIENTS))
    return path


def test_a_csv_a_parquet_file_and_a_bundled_dataset_are_sources(csv_source: Path, parquet_source: Path) -> None:
    assert load_source(csv_source).to_pydict() == PATIENTS.to_pydict()
    assert load_source(str(parquet_source)).equals(PATIENTS)
    assert load_source("breast-cancer").num_rows == 569


@pytest.mark.parametrize("name, message", [("data.xlsx", "neither a bundled dataset"), ("absent.csv", "is not a file")])
def test_a_source_that_is_no_csv_or_parquet_file_is_refused(tmp_path: Path, name: str, message: str) -> None:
    if name != "absent.csv":
        (tmp_path / name).write_bytes(b"PK")
    with pytest.raises(ConfigurationError, match=message):
        load_source(tmp_path / name)


def test_a_file_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigurationError, match="cannot read .*broken.parquet as parquet"):
        load_source(tmp_path / "broken.parquet")


def test_only_the_label_and_the_features_asked_for_are_kept_features_first() -> None:
    table, columns = training_columns(PATIENTS, "outcome", ["bmi", "age"])
    assert table.column_names == ["bmi", "age", "outcome"]
    assert columns == Columns(label="outcome", features=("bmi", "age"))


def test_without_features_every_column_but_the_label_is_kept() -> None:
    table, columns = training_columns(PATIENTS, "outcome", None)
    assert table.column_names == ["patient_id", "age", "bmi", "note", "outcome"]
    assert columns.features == ("patient_id", "age", "bmi", "note")


@pytest.mark.parametrize(
    "label, features, message",
    [
        ("outcome", ["age", "weight", "height"], r"no column 'weight', 'height' \(its columns: patient_id, age"),
        ("diagnosis", None, "no column 'diagnosis'"),
        ("outcome", ["age", "outcome"], "the label column 'outcome' must not also be a feature"),
        ("outcome", ["age", "age"], "features"),
    ],
)
def test_columns_that_are_unknown_or_ambiguous_are_refused(label: str, features: list[str] | None, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        training_columns(PATIENTS, label, features)


def test_a_manifest_without_columns_reads_back_and_verifies_as_it_was_signed() -> None:
    """Manifests written before columns were recorded keep verifying: the document has no ``columns`` key."""
    manifest = DatasetManifest("d", "v1", SHARD.kek_id, (SHARD,), "2026-01-01T00:00:00Z").signed(OWNER_KEY)
    assert "columns" not in manifest.to_json()
    signed_documents.verify(manifest.to_json(), OWNER_KEY.public_key(), what="manifest")


def test_recorded_columns_are_signed() -> None:
    manifest = DatasetManifest("d", "v1", SHARD.kek_id, (SHARD,), "2026-01-01T00:00:00Z",
                               columns=Columns(label="y", features=("a", "b"))).signed(OWNER_KEY)  # fmt: skip
    document = manifest.to_json()
    assert document["columns"] == {"label": "y", "features": ["a", "b"]}
    assert DatasetManifest.from_json(document) == manifest
    document["columns"]["features"] = ["a"]
    with pytest.raises(SignatureInvalid, match="changed after it was signed"):
        signed_documents.verify(DatasetManifest.from_json(document).to_json(), OWNER_KEY.public_key(), what="manifest")


def _read_json(store, container: str, blob: str) -> dict:
    body = io.BytesIO()
    store.download_to(container, blob, body)
    return json.loads(body.getvalue())


def _shard_tables(store, manifest: dict, kek_private: KekPrivateKey) -> list[pa.Table]:
    """Each shard as the TEE would open it: unsealed under the context the manifest names."""
    tables = []
    for shard in manifest["shards"]:
        sealed, plain = io.BytesIO(), io.BytesIO()
        store.download_to(shard["container"], shard["blob"], sealed)
        sealed.seek(0)
        unseal(sealed, plain, kek_private, expected_context=shard["context"], verify_digest=True)
        tables.append(pq.read_table(io.BytesIO(plain.getvalue())))
    return tables


def _publish(store, kek: KekPublicKey, source, **options):
    arguments = {"dataset_id": f"owner-{uuid.uuid4().hex[:8]}", "version": "v1", "label": "outcome", "features": None,
                 "suite": None, "kek": kek, "owner_key": OWNER_KEY, "store": store, "container": CONTAINER, **options}  # fmt: skip
    return publish_dataset(source, **arguments)


@pytest.mark.integration
def test_a_csv_is_published_with_only_its_training_columns(store, kek_public, kek_private, csv_source) -> None:
    published = _publish(store, kek_public, csv_source, features=["age", "bmi"])
    manifest_blob = DatasetManifest.blob_name(published.dataset_id, "v1")
    document = _read_json(store, CONTAINER, manifest_blob)
    signed_documents.verify(document, OWNER_KEY.public_key(), what="the manifest")
    assert document["columns"] == {"label": "outcome", "features": ["age", "bmi"]}
    assert published.manifest_blob == f"{CONTAINER}/{manifest_blob}" and published.kek_id == kek_public.kek_id
    assert published.manifest_sha256 == hashlib.sha256(signed_documents.signing_bytes(document)).hexdigest()
    assert (published.label, published.features, published.rows, published.shards) == ("outcome", ["age", "bmi"], 5, 1)
    assert published.validation["success"] is True
    [table] = _shard_tables(store, document, kek_private)
    assert table.to_pydict() == {"age": [41, 57, 33, 68, 50], "bmi": [22.5, 31.0, 27.2, 24.8, 29.9], "outcome": [0, 1, 0, 1, 1]}
    json.dumps(published.to_json())  # an XCom value and the command's output


@pytest.mark.integration
def test_a_parquet_file_is_split_into_shards_of_at_most_n_rows_in_order(store, kek_public, kek_private, parquet_source) -> None:
    published = _publish(store, kek_public, parquet_source, features=["age"], shard_rows=2)
    document = _read_json(store, CONTAINER, DatasetManifest.blob_name(published.dataset_id, "v1"))
    assert [shard["blob"].rsplit("/", 1)[1] for shard in document["shards"]] == [
        "shard-00000.parquet.sealed", "shard-00001.parquet.sealed", "shard-00002.parquet.sealed"]  # fmt: skip
    tables = _shard_tables(store, document, kek_private)
    assert [table.num_rows for table in tables] == [2, 2, 1]
    assert pa.concat_tables(tables).to_pydict() == {"age": [41, 57, 33, 68, 50], "outcome": [0, 1, 0, 1, 1]}
    assert published.shards == 3 and published.sealed_bytes == sum(shard["sealed_bytes"] for shard in document["shards"])


@pytest.mark.integration
def test_a_bundled_dataset_is_published_with_the_owner_s_suite(store, kek_public, kek_private) -> None:
    suite = {"name": "owner", "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}}]}  # fmt: skip
    published = _publish(store, kek_public, "breast-cancer", label="label", suite=suite)
    assert published.rows == 569 and len(published.features) == 30
    document = _read_json(store, CONTAINER, DatasetManifest.blob_name(published.dataset_id, "v1"))
    [table] = _shard_tables(store, document, kek_private)
    assert table.equals(bundled_table("breast-cancer"))


@pytest.mark.integration
@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"features": ["age", "weight"]}, ConfigurationError, "no column 'weight'"),
        ({"suite": {"name": "impossible", "expectations": [
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "outcome", "value_set": [7]}}]}},
         DataValidationFailed, "expectation"),
        ({"shard_rows": 0}, ConfigurationError, "at least one row"),
        ({"version": "latest"}, ConfigurationError, "the version 'latest' does not match"),
    ],
)  # fmt: skip
def test_what_is_refused_uploads_nothing(store, kek_public, csv_source, options, error, message) -> None:
    dataset_id = f"refused-{uuid.uuid4().hex[:8]}"
    with pytest.raises(error, match=message):
        _publish(store, kek_public, csv_source, dataset_id=dataset_id, **options)
    assert list(store.list_blobs(CONTAINER, f"{dataset_id}/")) == []


@pytest.mark.integration
def test_shards_an_interrupted_publication_left_without_a_manifest_are_replaced(store, kek_public, kek_private, csv_source) -> None:
    dataset_id = f"retried-{uuid.uuid4().hex[:8]}"
    store.ensure_container(CONTAINER)
    store.upload_stream(CONTAINER, f"{dataset_id}/v1/shard-00000.parquet.sealed", io.BytesIO(b"partial"), length=7)
    published = _publish(store, kek_public, csv_source, dataset_id=dataset_id, features=["age"])
    [table] = _shard_tables(store, _read_json(store, CONTAINER, DatasetManifest.blob_name(dataset_id, "v1")), kek_private)
    assert table.column_names == ["age", "outcome"] and published.shards == 1


@pytest.mark.integration
def test_a_published_version_is_never_replaced(store, kek_public, csv_source) -> None:
    published = _publish(store, kek_public, csv_source)
    before = _read_json(store, CONTAINER, DatasetManifest.blob_name(published.dataset_id, "v1"))
    with pytest.raises(VersionExists, match="versions are immutable"):
        _publish(store, kek_public, csv_source, dataset_id=published.dataset_id, features=["age"])
    assert _read_json(store, CONTAINER, DatasetManifest.blob_name(published.dataset_id, "v1")) == before


def test_new_manifest_records_the_columns_it_is_given() -> None:
    manifest = new_manifest("d", "v1", SHARD.kek_id, [SHARD], OWNER_KEY, columns=Columns(label="y", features=("x",)))
    assert manifest.columns == Columns(label="y", features=("x",)) and manifest.signatures


def test_a_manifest_whose_columns_are_malformed_does_not_parse() -> None:
    document = DatasetManifest("d", "v1", SHARD.kek_id, (SHARD,)).to_json()
    with pytest.raises(ConfigurationError, match="the dataset manifest's columns: label"):
        DatasetManifest.from_json({**document, "columns": {"label": 3}})
