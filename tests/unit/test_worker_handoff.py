"""The frames and the job handed to a training worker: what goes in comes out, and a broken pipe is refused."""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.contracts.job_spec import JobSpec
from securetrain.core.contracts.training import DatasetShard, JobKeys, TrainingSpec
from securetrain.core.sealed import KekPrivateKey
from securetrain.tee.training.data import DataLimits, TrainingData
from securetrain.tee.training.frames import BrokenFrame, read_frame, write_frame
from securetrain.tee.training.handoff import Assignment, receive_assignment, send_assignment
from securetrain.tee.training.loop import Standardization
from securetrain.tee.training.models import DataShape
from securetrain.tee.training.stream import StreamedDataset
from securetrain.tee.training.survey import Survey, survey_frame, survey_of_frame

KEK_ID = "https://vault.example/keys/kek/1"
OTHER_ID = "https://vault.example/keys/other/2"


def new_key() -> KekPrivateKey:
    return KekPrivateKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def spec() -> TrainingSpec:
    document = {
        "run_id": "run-1", "nonce": "n" * 32, "kek_id": KEK_ID,
        "datasets": [{"container": "datasets", "manifest": "m.json"}], "columns": {"label": "label"},
        "model": {"name": "mlp", "params": {"hidden": [8]}},
        "hyperparameters": {"epochs": 1, "batch_size": 8, "learning_rate": 0.01, "seed": 1},
        "checkpoints": {"container": "checkpoints", "prefix": "run-1/"},
        "output": {"container": "models", "blob": "run-1/model.sealed"},
    }  # fmt: skip
    shards = [DatasetShard(container="datasets", blob="a.sealed", format="parquet", context={"d": "1"})]
    return TrainingSpec.for_job(JobSpec.from_json(document), shards)


def test_frames_carry_json_and_bytes_and_end_cleanly() -> None:
    pipe = io.BytesIO()
    write_frame(pipe, {"a": 1}, b"\x00raw")
    write_frame(pipe, {"b": [2]})
    pipe.seek(0)
    assert read_frame(pipe) == ({"a": 1, "size": 4}, b"\x00raw")
    assert read_frame(pipe) == ({"b": [2]}, b"")
    assert read_frame(pipe) is None


@pytest.mark.parametrize("broken", [
    struct.pack(">Q", 10) + b"{}",  # ends inside the JSON
    struct.pack(">Q", 2) + b"[]",  # not an object
    struct.pack(">Q", 1 << 40),  # absurd length
    struct.pack(">Q", 12) + b'{"size": 9}' + b"x",  # ends inside the data
])  # fmt: skip
def test_a_broken_frame_is_refused(broken: bytes) -> None:
    with pytest.raises(BrokenFrame):
        read_frame(io.BytesIO(broken))


def test_the_assignment_hands_over_every_released_key_and_the_spec() -> None:
    keys = JobKeys.from_released(new_key(), KEK_ID, {OTHER_ID: new_key()})
    sent = Assignment(spec(), keys, (b"header",), 1, 2, 4242, 30, 1, DataLimits(cache_bytes=123))
    pipe = io.BytesIO()
    send_assignment(pipe, sent)
    pipe.seek(0)
    received = receive_assignment(pipe)
    assert received.spec == sent.spec and received.headers == sent.headers and received.limits == sent.limits
    assert (received.rank, received.world_size, received.port, received.timeout_s) == (1, 2, 4242, 30)
    assert received.keys.kek_public.kek_id == KEK_ID
    assert received.keys.kek_private.thumbprint == keys.kek_private.thumbprint
    assert received.keys.dataset_keks[OTHER_ID].thumbprint == keys.dataset_keks[OTHER_ID].thumbprint


def test_a_closed_pipe_hands_over_nothing() -> None:
    with pytest.raises(BrokenFrame, match="closed the pipe"):
        receive_assignment(io.BytesIO())


def surveyed(job: TrainingSpec) -> Survey:
    """A survey of ``job``'s one shard: 10 rows of 2 x 3 features, 8 for training, the 2 others held out."""
    held_out = TrainingData(torch.arange(12, dtype=torch.float32).reshape(2, 2, 3), torch.tensor([0, 2]), ("x",),
                            tuple(f"x_{i}" for i in range(6)), "label")  # fmt: skip
    stats = Standardization(torch.zeros(2, 3), torch.ones(2, 3))
    dataset = StreamedDataset(tuple(job.datasets), (8,), 10, ("x",), DataShape((2, 3), 3), stats, held_out)
    return Survey(dataset, {"suite": None, "success": True, "rows": 10})


def test_the_assignment_hands_over_the_launchers_survey() -> None:
    job = spec()
    sent = Assignment(job, JobKeys.from_released(new_key(), KEK_ID, {}), (b"header",), 0, 2, 4242, 30, 1,
                      DataLimits(), surveyed(job))  # fmt: skip
    pipe = io.BytesIO()
    send_assignment(pipe, sent)
    pipe.seek(0)
    received = receive_assignment(pipe)
    assert received.survey is not None and sent.survey is not None
    got, want = received.survey.dataset, sent.survey.dataset
    assert received.survey.aggregates == sent.survey.aggregates
    assert (got.shards, got.train_rows, got.rows, got.feature_names, got.shape) == (
        want.shards, want.train_rows, want.rows, want.feature_names, want.shape)
    assert torch.equal(got.stats.mean, want.stats.mean) and torch.equal(got.stats.std, want.stats.std)
    assert torch.equal(got.held_out.features, want.held_out.features)
    assert torch.equal(got.held_out.labels, want.held_out.labels)
    assert got.held_out.feature_columns == want.held_out.feature_columns and got.held_out.label_name == "label"


def test_an_assignment_without_its_announced_survey_is_refused() -> None:
    job = spec()
    pipe = io.BytesIO()
    send_assignment(pipe, Assignment(job, JobKeys.from_released(new_key(), KEK_ID, {}), (b"h",), 0, 2, 1, 30, 1,
                                     DataLimits(), surveyed(job)))  # fmt: skip
    first = pipe.getvalue()
    (length,) = struct.unpack(">Q", first[:8])
    message, data = read_frame(io.BytesIO(first))
    truncated = first[: 8 + length + message["size"]]
    with pytest.raises(BrokenFrame, match="before handing over its survey"):
        receive_assignment(io.BytesIO(truncated))


def _tampered(change: str) -> tuple[dict, bytes]:
    message, data = survey_frame(surveyed(spec()))
    fields = message["survey"]
    tensors = safetensors.torch.load(data)
    if change == "shards":
        fields["train_rows"] = [4, 4]
    elif change == "rows":
        fields["rows"] = 5
    elif change == "type":
        fields["rows"] = "10"
    elif change == "extra":
        fields["extra"] = 1
    elif change == "columns":
        fields["feature_columns"] = ["x_0"]
    elif change == "mean":
        tensors["mean"] = torch.zeros(3)
    elif change == "dtype":
        tensors["held_out_labels"] = tensors["held_out_labels"].float()
    elif change == "missing":
        del tensors["std"]
    elif change == "held":
        tensors["held_out_features"] = torch.zeros(3, 2, 3)
    elif change == "labels":
        tensors["held_out_labels"] = torch.tensor([0, 7])
    elif change == "too_many":
        fields["rows"] = 9
        tensors["held_out_features"], tensors["held_out_labels"] = torch.zeros(2, 2, 3), torch.tensor([0, 1])
    if change == "bytes":
        return message, data[:8] + b"{not json" + data[17:]
    if change == "length":
        return message, (1 << 40).to_bytes(8, "little") + data[8:]
    return message, safetensors.torch.save(tensors)


@pytest.mark.parametrize("change", ["shards", "rows", "type", "extra", "columns", "mean", "dtype", "missing", "held",
                                    "labels", "too_many", "bytes", "length"])  # fmt: skip
def test_a_malformed_survey_is_refused(change: str) -> None:
    message, data = _tampered(change)
    with pytest.raises(BrokenFrame, match="survey"):
        survey_of_frame(message, data, spec())


def test_a_worker_loads_neither_opacus_nor_the_key_path_nor_the_evidence_providers() -> None:
    """Every job starts its workers afresh, and a worker never trains DP-SGD, attests or asks Key Vault for a key:
    Opacus (and the SciPy it loads), the attester, the evidence providers (tpm2-tss with them) and the Key Vault
    clients stay out of its start-up."""
    unneeded = ["opacus", "scipy", "securetrain.tee.attest", "securetrain.tee.release", "azure.keyvault.keys",
                "securetrain.tee.evidence", "securetrain.tee.gpu_attestation", "tpm2_pytss"]
    probe = f"import sys, securetrain.tee.training.worker; print(sorted(set({unneeded!r}) & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
