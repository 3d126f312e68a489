"""``securetrain dataset publish``: a data owner without Airflow publishes a sealed version against the local stack,
as the stack's data-owner identity with the settings the stack wrote for it; bad input exits with its code and
names the cause."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pytest

from securetrain.core import signed_documents
from securetrain.core.cli import main
from securetrain.core.onboarding import DatasetManifest
from securetrain.core.storage import BlobStore
from securetrain.localstack import StackLayout, data_owner

CONTAINER = "datasets"


def test_help_names_every_option_and_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dataset", "publish", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--dataset-id", "--version", "--source", "--bundled", "--label", "--features", "--suite",
                   "--kek-id", "--kek-public-key", "--owner-key", "--container", "--shard-rows", "manifest_sha256"):  # fmt: skip
        assert option in text, option
    assert "exit codes: 0 published, 1 the data failed its expectation suite" in text


def test_a_source_is_required_and_only_one(capsys, tmp_path: Path) -> None:
    common = ["dataset", "publish", "--dataset-id", "d", "--version", "v1", "--label", "label", "--kek-id",
              "https://vault.test/keys/kek", "--owner-key", str(tmp_path / "k.pem"), "--container", CONTAINER]  # fmt: skip
    for sources in ([], ["--bundled", "digits", "--source", str(tmp_path / "d.csv")]):
        with pytest.raises(SystemExit) as exited:
            main([*common, *sources])
        assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.fixture
def publish(local_stack, capsys):
    """``securetrain --settings <data-owner> dataset publish ...`` with the stack's KEK and owner key: (exit code,
    stdout, stderr)."""
    settings = local_stack.settings_file("data-owner")
    data_owner.signing_key(StackLayout(local_stack.state_dir))  # made on first use
    owner_key = data_owner.signing_key_path(StackLayout(local_stack.state_dir))

    def run(*arguments: str, kek_id: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--settings", str(settings), "dataset", "publish", "--kek-id", kek_id or local_stack.env["SECURETRAIN_KEK_ID"],
                     "--owner-key", str(owner_key), "--container", CONTAINER, *arguments])  # fmt: skip
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.integration
def test_a_bundled_dataset_is_published_in_shards_and_signed_by_the_owner(local_stack, publish) -> None:
    dataset_id = f"cli-{uuid.uuid4().hex[:8]}"
    code, out, err = publish("--dataset-id", dataset_id, "--version", "v1", "--bundled", "breast-cancer", "--label",
                             "label", "--shard-rows", "300")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["dataset_id"], summary["rows"], summary["shards"]) == (dataset_id, 569, 2)
    with BlobStore.from_settings(local_stack.settings("data-owner")) as store:
        body = io.BytesIO()
        store.download_to(CONTAINER, DatasetManifest.blob_name(dataset_id, "v1"), body)
    document = json.loads(body.getvalue())
    owner = data_owner.signing_key(StackLayout(local_stack.state_dir)).public_key()
    signed_documents.verify(document, owner, what="the manifest")
    assert summary["manifest_sha256"] == hashlib.sha256(signed_documents.signing_bytes(document)).hexdigest()
    assert summary["kek_id"] == document["kek_id"] and document["kek_id"].startswith(local_stack.env["SECURETRAIN_KEK_ID"])


@pytest.mark.integration
def test_bad_input_exits_with_its_code_and_names_the_cause(local_stack, publish, tmp_path: Path) -> None:
    source = tmp_path / "owner.csv"
    pyarrow.csv.write_csv(pa.table({"age": [30, 40, 50], "outcome": [0, 1, 1]}), source)
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"name": "strict", "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "outcome", "value_set": [0]}}]}))  # fmt: skip
    dataset_id = f"cli-bad-{uuid.uuid4().hex[:8]}"
    common = ["--dataset-id", dataset_id, "--version", "v1", "--source", str(source), "--label", "outcome"]
    assert publish(*common, "--features", "age", "height")[::2] == (2, "securetrain dataset: error: the source has no column 'height' (its columns: age, outcome)\n")
    code, _, err = publish(*common, "--suite", str(suite))
    assert code == 1 and "expectation" in err
    code, _, err = publish(*common, "--kek-public-key", str(suite), kek_id="https://vault.test/keys/kek")
    assert code == 2 and "--kek-public-key needs a versioned --kek-id" in err
    with BlobStore.from_settings(local_stack.settings("data-owner")) as store:
        assert list(store.list_blobs(CONTAINER, f"{dataset_id}/")) == []
