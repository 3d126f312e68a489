"""Checkpoints: a safetensors round trip of model, optimizer and RNG state; what restore refuses."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from securetrain.core.contracts.job_spec import CheckpointLocation
from securetrain.tee.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointInvalid,
    Progress,
    WindowCut,
    WindowCutChanged,
    checkpoint_blob,
    encode_checkpoint,
    restore_checkpoint,
    safetensors_metadata,
)
from securetrain.tee.training.models import DataShape, build_model

RUN = "manual__2026-01-01"


def trained(seed: int, steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = build_model("mlp", {"hidden": [8], "dropout": 0.2}, DataShape((4,), 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer


def test_a_checkpoint_restores_model_optimizer_and_rng_exactly() -> None:
    model, optimizer = trained(seed=1)
    payload = encode_checkpoint(model, optimizer, Progress(3, 42, {"val_loss": 0.5}), RUN)
    expected_next = torch.rand(4)
    torch.manual_seed(999)  # move the RNG on; restore must bring it back
    fresh, fresh_optimizer = trained(seed=2, steps=0)

    progress = restore_checkpoint(payload, fresh, fresh_optimizer, RUN, 3)

    assert progress == Progress(3, 42, {"val_loss": 0.5})
    assert torch.equal(torch.rand(4), expected_next)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)


def test_the_checkpoint_is_plain_safetensors_with_described_metadata() -> None:
    model, optimizer = trained(seed=1)
    payload = encode_checkpoint(model, optimizer, Progress(1, 3, {}), RUN)
    metadata = safetensors_metadata(payload)
    assert metadata["format"] == CHECKPOINT_FORMAT and metadata["run_id"] == RUN and metadata["epoch"] == "1"
    assert json.loads(metadata["optimizer"])["param_groups"][0]["lr"] == 0.01
    names = set(safetensors.torch.load(payload))
    assert {"model.layers.1.weight", "model.standardize.mean", "optimizer.0.exp_avg", "optimizer.0.step",
            "rng.torch"} <= names  # fmt: skip


@pytest.mark.parametrize(("run_id", "epoch"), [(RUN, 2), ("another-run", 1)])
def test_a_checkpoint_of_another_run_or_epoch_is_refused(run_id: str, epoch: int) -> None:
    model, optimizer = trained(seed=1)
    payload = encode_checkpoint(model, optimizer, Progress(1, 3, {}), RUN)
    with pytest.raises(CheckpointInvalid, match=f"it is epoch 1 of run '{RUN}', expected epoch {epoch}"):
        restore_checkpoint(payload, model, optimizer, run_id, epoch)


def test_a_checkpoint_of_another_model_is_refused_before_anything_loads() -> None:
    model, optimizer = trained(seed=1)
    payload = encode_checkpoint(model, optimizer, Progress(1, 3, {}), RUN)
    other = build_model("mlp", {"hidden": [16]}, DataShape((4,), 3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointInvalid, match="model tensors do not match"):
        restore_checkpoint(payload, other, torch.optim.Adam(other.parameters()), RUN, 1)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


@pytest.mark.parametrize("payload", [b"", b"\xff" * 8 + b"{}", (2).to_bytes(8, "little") + b"[]"])
def test_a_malformed_safetensors_header_is_refused(payload: bytes) -> None:
    with pytest.raises(CheckpointInvalid):
        safetensors_metadata(payload)


def test_checkpoint_blobs_are_named_by_epoch_under_the_prefix() -> None:
    assert checkpoint_blob(CheckpointLocation(container="checkpoints", prefix="run-1/"), 3) == "run-1/epoch-0003.safetensors.sealed"


def test_a_mid_epoch_checkpoint_resumes_only_under_the_window_settings_it_was_cut_under() -> None:
    model, optimizer = trained(seed=1)
    cut = WindowCut(window_shards=4, lanes=2)
    payload = encode_checkpoint(model, optimizer, Progress(1, 30, {"train_loss_sum": 2.0}, windows=3), RUN, cut)
    assert safetensors_metadata(payload)["lanes"] == "2" and safetensors_metadata(payload)["window_shards"] == "4"
    assert restore_checkpoint(payload, *trained(seed=2, steps=0), RUN, 1, windows=3, cut=cut).windows == 3
    with pytest.raises(WindowCutChanged, match="SECURETRAIN_DATA_LANES 2 \\(now 4\\)"):
        restore_checkpoint(payload, *trained(seed=2, steps=0), RUN, 1, windows=3, cut=WindowCut(4, 4))
    with pytest.raises(WindowCutChanged, match="SECURETRAIN_DATA_WINDOW_SHARDS 4 \\(now 8\\)"):
        restore_checkpoint(payload, *trained(seed=2, steps=0), RUN, 1, windows=3, cut=WindowCut(8, 2))
    # One that does not say how it was cut cannot be placed in this run's order.
    unrecorded = encode_checkpoint(model, optimizer, Progress(1, 30, {}, windows=3), RUN)
    with pytest.raises(WindowCutChanged, match="SECURETRAIN_DATA_LANES unrecorded"):
        restore_checkpoint(unrecorded, *trained(seed=2, steps=0), RUN, 1, windows=3, cut=cut)
    # An epoch's end does not depend on how the epoch was cut.
    at_the_end = encode_checkpoint(model, optimizer, Progress(2, 60, {}), RUN, cut)
    assert "lanes" not in safetensors_metadata(at_the_end)
    assert restore_checkpoint(at_the_end, *trained(seed=2, steps=0), RUN, 2, cut=WindowCut(8, 4)).epoch == 2
