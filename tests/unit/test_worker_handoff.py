"""The frames and the job handed to a training worker: what goes in comes out, and a broken pipe is refused."""

from __future__ import annotations

import io
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.contracts.job_spec import JobSpec
from securetrain.core.contracts.training import DatasetShard, JobKeys, TrainingSpec
from securetrain.core.sealed import KekPrivateKey
from securetrain.tee.training.data import DataLimits
from securetrain.tee.training.frames import BrokenFrame, read_frame, write_frame
from securetrain.tee.training.handoff import Assignment, receive_assignment, send_assignment

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
