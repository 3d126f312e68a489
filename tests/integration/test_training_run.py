"""run_training against Azurite: the agent's training path from sealed shards to a sealed model.

The store is a real BlobStore on the local stack's Azurite. The KEK is made here (as if released): key
release is the agent's part and is tested with it.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import safetensors.torch
import torch
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.datasets import bundled_table, to_parquet
from securetrain.core.sealed import KekPrivateKey, SealedReader, seal
from securetrain.core.sealed.errors import SegmentTampered
from securetrain.core.storage import BlobStore
from securetrain.core.contracts.job_spec import JobSpec
from securetrain.core.contracts.training import DatasetShard, JobKeys, TrainingCancelled, TrainingSpec
from securetrain.tee.training import run_training
from securetrain.tee.training.checkpoint import safetensors_metadata
from securetrain.core.validation import DataValidationFailed

pytestmark = pytest.mark.integration

KEK_ID = "https://127.0.0.1:9/keys/kek/0123456789abcdef"
CONTEXT = {"dataset_id": "breast-cancer"}
SEED = 11


class RecordingProgress:
    """A ProgressSink that records what training reported, and can cancel after a given epoch."""

    def __init__(self, cancel: threading.Event | None = None, cancel_after_epoch: int | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._cancel, self._cancel_after = cancel, cancel_after_epoch

    def validation_done(self, aggregates: Mapping[str, Any]) -> None:
        self.calls.append(("validation_done", dict(aggregates)))

    def epoch_done(self, epoch: int, step: int, metrics: Mapping[str, float], checkpoint_blob: str) -> None:
        self.calls.append(("epoch_done", (epoch, step, dict(metrics), checkpoint_blob)))
        if self._cancel is not None and epoch == self._cancel_after:
            self._cancel.set()

    def sealing_model(self) -> None:
        self.calls.append(("sealing_model", None))


class CancelAfterChecks(threading.Event):
    """A cancel event that becomes set on its ``checks``-th look: a crash at a fixed step, mid-epoch."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self._left = checks

    def is_set(self) -> bool:
        self._left -= 1
        if self._left < 0:
            self.set()
        return super().is_set()


@pytest.fixture(scope="module")
def store(local_stack) -> BlobStore:
    with BlobStore.from_settings(local_stack.settings()) as blob_store:
        for container in ("datasets", "checkpoints", "models"):
            blob_store.ensure_container(container)
        yield blob_store


@pytest.fixture(scope="module")
def keys() -> JobKeys:
    return JobKeys.from_released(KekPrivateKey(rsa.generate_private_key(public_exponent=65537, key_size=2048)), KEK_ID)


def upload_sealed(store: BlobStore, keys: JobKeys, blob: str, plaintext: bytes, context=CONTEXT) -> None:
    sealed = io.BytesIO()
    seal(io.BytesIO(plaintext), sealed, keys.kek_public, context, segment_size=4096)
    store.upload_stream("datasets", blob, io.BytesIO(sealed.getvalue()), overwrite=True)


def training_spec(run: str, shards: list[str], fmt: str = "parquet", **changes: Any) -> TrainingSpec:
    document = {
        "run_id": run,
        "nonce": "n" * 32,
        "kek_id": KEK_ID,
        "datasets": [{"container": "datasets", "manifest": f"{run}/manifest.json"}],
        "columns": {"label": "label"},
        "model": {"name": "mlp", "params": {"hidden": [16]}},
        "hyperparameters": {"epochs": 3, "batch_size": 64, "learning_rate": 0.01, "seed": SEED},
        "checkpoints": {"container": "checkpoints", "prefix": f"{run}/"},
        "output": {"container": "models", "blob": f"{run}/model.sealed"},
    }
    for key, value in changes.items():
        document[key] = {**document[key], **value} if isinstance(value, dict) and key in document else value
    # The shards as the agent resolves them from the owner-signed manifest (tests/security covers that step).
    resolved = [DatasetShard(container="datasets", blob=blob, format=fmt, context=CONTEXT) for blob in shards]
    return TrainingSpec.for_job(JobSpec.from_json(document), resolved)


@pytest.fixture(scope="module")
def breast_cancer(store: BlobStore, keys: JobKeys) -> list[str]:
    """The bundled breast-cancer data sealed as two Parquet shards."""
    table = bundled_table("breast-cancer")
    blobs = []
    for index, (start, length) in enumerate([(0, 300), (300, table.num_rows - 300)]):
        blob = f"bc-{uuid.uuid4().hex[:8]}/part-{index}.parquet.sealed"
        upload_sealed(store, keys, blob, to_parquet(table.slice(start, length)))
        blobs.append(blob)
    return blobs


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


def open_model(store: BlobStore, keys: JobKeys, spec: TrainingSpec) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with store.open_read(spec.output.container, spec.output.blob) as src:
        reader = SealedReader(src, keys.kek_private, expected_context={"run_id": spec.run_id, "kind": "model"})
        payload = b"".join(bytes(segment) for segment in reader.segments())
    return safetensors.torch.load(payload), safetensors_metadata(payload)


def checkpoint_names(store: BlobStore, spec: TrainingSpec) -> list[str]:
    return sorted(info.name for info in store.list_blobs("checkpoints", spec.checkpoints.prefix))


def plain_pytorch(table: pa.Table, epochs: int, batch_size: int, lr: float, seed: int) -> tuple[torch.nn.Module, dict]:
    """The same training written directly in PyTorch from the plaintext, following loop.py's documented rules."""
    features = torch.tensor(table.drop(["label"]).to_pandas().to_numpy(dtype="float32"))
    labels = torch.tensor(table.column("label").to_numpy())
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held_out = round(len(labels) * 0.2)
    val_rows, train_rows = order[:held_out], order[held_out:]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    mean, std = features[train_rows].mean(0), features[train_rows].std(0, correction=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(1, epochs + 1):
        epoch_generator = torch.Generator().manual_seed(seed * 65536 + epoch)
        shuffled = train_rows[torch.randperm(len(train_rows), generator=epoch_generator)]
        for batch in shuffled.split(batch_size):
            loss = torch.nn.functional.cross_entropy(model((features[batch] - mean) / std), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        logits = model((features[val_rows] - mean) / std)
    metrics = {"val_loss": float(torch.nn.functional.cross_entropy(logits, labels[val_rows])),
               "val_accuracy": int((logits.argmax(1) == labels[val_rows]).sum()) / len(val_rows)}  # fmt: skip
    return model, metrics


def test_breast_cancer_through_the_agent_path_matches_plain_pytorch(store, keys, breast_cancer) -> None:
    suite = {"name": "breast-cancer", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "mean_radius"}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}},
    ]}  # fmt: skip
    spec = training_spec(run_id(), breast_cancer, expectation_suite=suite)
    progress = RecordingProgress()

    result = run_training(spec, keys, store, progress, threading.Event())

    plain_model, plain_metrics = plain_pytorch(bundled_table("breast-cancer"), 3, 64, 0.01, SEED)
    assert result.epochs_completed == 3 and result.steps_completed == 3 * 8 and result.device == "cpu"
    assert result.metrics["val_accuracy"] == plain_metrics["val_accuracy"]
    assert result.metrics["val_loss"] == pytest.approx(plain_metrics["val_loss"], rel=1e-5)
    assert result.metrics["val_accuracy"] > 0.9
    weights, metadata = open_model(store, keys, spec)
    # The plain model is the same Sequential without the standardization layer in front.
    standardization = {"standardize.mean", "standardize.std"}
    assert {f"layers.{name}" for name in plain_model.state_dict()} | standardization == set(weights)
    for name, plain in plain_model.state_dict().items():
        assert torch.allclose(weights[f"layers.{name}"], plain, atol=1e-6), name
    assert '"model": "mlp"' in metadata["description"]
    kinds = [kind for kind, _ in progress.calls]
    assert kinds == ["validation_done", "epoch_done", "epoch_done", "epoch_done", "sealing_model"]
    assert progress.calls[0][1]["success"] and progress.calls[0][1]["rows"] == 569
    expected_blobs = [f"{spec.run_id}/epoch-000{e}.safetensors.sealed" for e in (1, 2, 3)]
    assert [c[1][3] for c in progress.calls[1:4]] == expected_blobs
    assert checkpoint_names(store, spec) == [c[1][3] for c in progress.calls[1:4]]


def test_an_interrupted_run_resumes_to_the_same_weights_bit_for_bit(store, keys, breast_cancer, caplog) -> None:
    uninterrupted = training_spec(run_id(), breast_cancer, model={"params": {"hidden": [16], "dropout": 0.3}})
    run_training(uninterrupted, keys, store, RecordingProgress(), threading.Event())

    resumed = training_spec(run_id(), breast_cancer, model={"params": {"hidden": [16], "dropout": 0.3}})
    # Stop in the middle of epoch 3, as a crash would: one cancel check once the data is open, then one
    # before each of the 8 steps per epoch; 3 steps of epoch 3 are taken.
    with pytest.raises(TrainingCancelled, match="during epoch 3 at step 19"):
        run_training(resumed, keys, store, RecordingProgress(), CancelAfterChecks(1 + 2 * 8 + 3))
    # The crash left epochs 1 and 2; damage the newest, so that resume must skip it and use epoch 1.
    newest = f"{resumed.run_id}/epoch-0002.safetensors.sealed"
    damaged = bytearray(b"".join(store.download_chunks("checkpoints", newest)))
    damaged[-10] ^= 1
    store.upload_stream("checkpoints", newest, io.BytesIO(bytes(damaged)), overwrite=True)
    progress = RecordingProgress()
    with caplog.at_level(logging.INFO, logger="securetrain.tee.training"):
        result = run_training(resumed, keys, store, progress, threading.Event())

    assert f"skipping checkpoint checkpoints/{newest}" in caplog.text and "segment" in caplog.text
    assert f"resuming run {resumed.run_id} from checkpoints/{resumed.run_id}/epoch-0001" in caplog.text
    assert [call[1][0] for call in progress.calls if call[0] == "epoch_done"] == [2, 3]
    assert result.steps_completed == 24
    expected, _ = open_model(store, keys, uninterrupted)
    actual, _ = open_model(store, keys, resumed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_a_cancel_mid_epoch_keeps_the_last_checkpoint(store, keys, breast_cancer) -> None:
    spec = training_spec(run_id(), breast_cancer)
    cancel = threading.Event()
    with pytest.raises(TrainingCancelled, match="during epoch 2 at step 8; the last checkpoint is intact"):
        run_training(spec, keys, store, RecordingProgress(cancel, cancel_after_epoch=1), cancel)
    assert checkpoint_names(store, spec) == [f"{spec.run_id}/epoch-0001.safetensors.sealed"]
    assert not list(store.list_blobs("models", spec.run_id))


def test_a_forged_checkpoint_sealed_with_the_public_key_is_not_resumed_from(store, keys, breast_cancer, caplog) -> None:
    spec = training_spec(run_id(), breast_cancer, hyperparameters={"epochs": 2})
    forged_weights = safetensors.torch.save({"model.layers.1.weight": torch.zeros(16, 30)}, metadata={"epoch": "1"})
    sealed = io.BytesIO()
    context = {"run_id": spec.run_id, "kind": "checkpoint", "epoch": "1", "mac": "00" * 32}
    seal(io.BytesIO(forged_weights), sealed, keys.kek_public, context)
    store.upload_stream("checkpoints", f"{spec.run_id}/epoch-0001.safetensors.sealed", io.BytesIO(sealed.getvalue()))
    with caplog.at_level(logging.WARNING, logger="securetrain.tee.training"):
        result = run_training(spec, keys, store, RecordingProgress(), threading.Event())
    assert "its MAC does not verify" in caplog.text
    assert result.epochs_completed == 2 and result.steps_completed == 16  # trained from the start


def test_a_tampered_shard_fails_naming_the_segment_before_any_step(store, keys) -> None:
    table = bundled_table("breast-cancer")
    good, bad = f"t-{uuid.uuid4().hex[:8]}/part-0.sealed", f"t-{uuid.uuid4().hex[:8]}/part-1.sealed"
    upload_sealed(store, keys, good, to_parquet(table))
    sealed = io.BytesIO()
    seal(io.BytesIO(to_parquet(table)), sealed, keys.kek_public, CONTEXT, segment_size=4096)
    tampered = bytearray(sealed.getvalue())
    tampered[len(tampered) // 2] ^= 0x40
    store.upload_stream("datasets", bad, io.BytesIO(bytes(tampered)), overwrite=True)
    spec = training_spec(run_id(), [good, bad])
    progress = RecordingProgress()
    with pytest.raises(SegmentTampered, match=rf"^shard datasets/{bad}: segment \d+ failed authentication"):
        run_training(spec, keys, store, progress, threading.Event())
    assert progress.calls == []  # neither validated nor trained: no optimizer step, no checkpoint
    assert checkpoint_names(store, spec) == []


def test_a_failed_suite_stops_the_job_with_aggregates_only(store, keys, breast_cancer) -> None:
    suite = {"name": "strict", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "mean_area", "max_value": 1000}},
    ]}  # fmt: skip
    spec = training_spec(run_id(), breast_cancer, expectation_suite=suite)
    progress = RecordingProgress()
    with pytest.raises(DataValidationFailed, match="expect_column_values_to_be_between\\(mean_area\\)") as err:
        run_training(spec, keys, store, progress, threading.Event())
    (result,) = err.value.aggregates["expectations"]
    assert result["element_count"] == 569 and result["unexpected_count"] > 0
    assert set(result) <= {"expectation", "success", "columns", "element_count", "unexpected_count",
                           "unexpected_percent", "unexpected_percent_total", "unexpected_percent_nonmissing",
                           "missing_count", "missing_percent"}  # fmt: skip
    assert progress.calls == [] and checkpoint_names(store, spec) == []


def test_digits_as_safetensors_images_train_a_cnn(store, keys) -> None:
    table = bundled_table("digits")
    images = torch.tensor(table.drop(["label"]).to_pandas().to_numpy(dtype="float32")).reshape(-1, 1, 8, 8).contiguous()
    blob = f"digits-{uuid.uuid4().hex[:8]}/part-0.sealed"
    upload_sealed(store, keys, blob, safetensors.torch.save(
        {"images": images, "label": torch.tensor(table.column("label").to_numpy())}))  # fmt: skip
    spec = training_spec(run_id(), [blob], fmt="safetensors", model={"name": "cnn", "params": {}},
                         hyperparameters={"epochs": 2, "learning_rate": 0.003})  # fmt: skip
    result = run_training(spec, keys, store, RecordingProgress(), threading.Event())
    assert result.metrics["val_accuracy"] > 0.85
    _, metadata = open_model(store, keys, spec)
    assert '"feature_shape": [1, 8, 8]' in metadata["description"] and '"num_classes": 10' in metadata["description"]
    assert json.loads(metadata["description"])["data_path"] == {"streamed": False, "workers": 1}


def test_no_plaintext_marker_in_work_or_temp_dirs_or_storage_after_a_run(
    store, keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    table = bundled_table("breast-cancer")
    table = table.append_column("note", pa.array([f"{marker}-{i}" for i in range(table.num_rows)]))
    blob = f"marker-{uuid.uuid4().hex[:8]}/part-0.sealed"
    plaintext = to_parquet(table)
    assert marker.encode() in plaintext  # the scan below can find it wherever the plaintext would land
    upload_sealed(store, keys, blob, plaintext)
    features = [name for name in table.column_names if name not in ("label", "note")]
    not_null = {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "label"}}
    suite = {"name": "s", "expectations": [not_null]}
    spec = training_spec(run_id(), [blob], columns={"features": features}, expectation_suite=suite)
    work, temp = tmp_path / "work", tmp_path / "temp"
    work.mkdir(), temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    run_training(spec, keys, store, RecordingProgress(), threading.Event())

    needle = marker.encode()
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert [path for path in files if needle in path.read_bytes()] == []
    blobs = [(container, info.name) for container in ("datasets", "checkpoints", "models")
             for info in store.list_blobs(container)]  # fmt: skip
    assert len(blobs) > 3
    leaked = [name for container, name in blobs if needle in b"".join(store.download_chunks(container, name))]
    assert leaked == []
