"""The trainer's CUDA path: batches pinned and copied without blocking, forward passes under bfloat16 autocast with
float32 weights, deterministic kernels, and a result within tolerance of the CPU's. These run where PyTorch sees a
GPU and are skipped elsewhere (docs/trainer.md, "Devices", says how to run them); every other test trains on the CPU.
"""

from __future__ import annotations

import threading

import pytest
import torch

from securetrain.core.contracts.job_spec import Hyperparameters
from securetrain.tee.training.checkpoint import Progress
from securetrain.tee.training.data import TrainingData
from securetrain.tee.training.loop import (
    Standardization, Trainee, Training, build_trainee, data_shape, make_deterministic, mixed_precision, plain_training,
    split_rows, train,
)  # fmt: skip

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU PyTorch sees")]

HYPER = Hyperparameters(epochs=3, batch_size=64, learning_rate=0.01, seed=7)


def separable(rows: int = 4096) -> TrainingData:
    """Rows whose class is the sign of two of their eight features: an MLP learns it to near 100 %."""
    features = torch.randn(rows, 8, generator=torch.Generator().manual_seed(3))
    labels = (features[:, 0] + features[:, 1] > 0).long()
    names = tuple(f"f{i}" for i in range(8))
    return TrainingData(features, labels, names, names, "label")


def prepared(device: torch.device) -> tuple[Trainee, Training, TrainingData, torch.Tensor]:
    data = separable()
    train_rows, held_out = split_rows(data.rows, HYPER.seed)
    make_deterministic(device)
    stats = Standardization.of(data, train_rows)
    trainee = build_trainee("mlp", {"hidden": [64, 32]}, HYPER, data_shape(data), stats, device)
    return trainee, plain_training(trainee, data, train_rows, HYPER, device), data, held_out


def trained(device: torch.device) -> tuple[Trainee, Progress]:
    trainee, training, data, held_out = prepared(device)
    progress = train(trainee, training, (data, held_out), HYPER, Progress(0, 0, {}), device, threading.Event(),
                     lambda _: None)  # fmt: skip
    return trainee, progress


def test_batches_come_pinned_and_training_uses_bfloat16_autocast() -> None:
    trainee, training, *_ = prepared(torch.device("cuda"))
    features, labels, *_ = next(iter(next(training.windows(1, 0))[1]))
    assert features.is_pinned() and labels.is_pinned()  # so that the copies to the GPU need not block
    assert mixed_precision(torch.device("cuda"), trainee.model, training)


def test_forward_passes_run_in_bfloat16_while_weights_and_optimizer_state_stay_float32() -> None:
    seen: set[torch.dtype] = set()
    trainee, training, data, held_out = prepared(torch.device("cuda"))
    first_linear = next(m for m in trainee.model.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda _module, _inputs, output: seen.add(output.dtype))
    train(trainee, training, (data, held_out), HYPER, Progress(0, 0, {}), torch.device("cuda"), threading.Event(),
          lambda _: None)  # fmt: skip
    assert seen == {torch.bfloat16}
    assert {p.dtype for p in trainee.model.parameters()} == {torch.float32}
    moments = [t for state in trainee.optimizer.state.values() for t in state.values() if t.dim() > 0]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    assert all(p.is_cuda for p in trainee.model.parameters())


def test_a_gpu_run_is_deterministic_and_within_tolerance_of_the_cpu_run() -> None:
    first, progress = trained(torch.device("cuda"))
    second, _ = trained(torch.device("cuda"))
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # deterministic kernels: the same weights, bit for bit
    _, on_cpu = trained(torch.device("cpu"))
    # bfloat16 forward passes: not the CPU's weights, but the same model within the documented tolerance.
    assert abs(progress.metrics["val_accuracy"] - on_cpu.metrics["val_accuracy"]) <= 0.02
    assert progress.metrics["val_accuracy"] >= 0.95
