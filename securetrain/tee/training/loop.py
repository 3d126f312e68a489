"""The training loop: one function a reader can hold in mind.

The rules that make a run reproducible (a resumed run reaches the same weights as one never interrupted,
and plain PyTorch given the same rules the same metrics), the devices and where cancel is checked are in
docs/trainer.md ("The loop and reproducibility"). Batches are gathered by index from the in-memory tensors
through a ``DataLoader`` without worker processes: workers would pass plaintext batches through
shared-memory files, and a process of their own would be one more place plaintext lives.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from securetrain.core.contracts.job_spec import Hyperparameters
from securetrain.core.contracts.training import TrainingCancelled
from securetrain.tee.training.checkpoint import AccountantHistory, Progress
from securetrain.tee.training.data import TrainingData
from securetrain.tee.training.models import DataShape, RegisteredModel, build_model

log = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.2
# Held-out batches are evaluated in fixed slices of this many rows, whatever the training batch size.
EVALUATION_BATCH = 4096


def select_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """``cpu``, or ``cuda:<index> (<GPU name>)``: what the job result and the log report."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def make_deterministic(device: torch.device) -> None:
    """Ask PyTorch for deterministic kernels (an error, not a silent difference, where there are none)."""
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; it must be set before cuBLAS starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def mixed_precision(device: torch.device, model: RegisteredModel, training: Training) -> bool:
    """Whether the forward passes run under bfloat16 autocast: on a GPU with bfloat16 kernels, where the model and
    the training allow. bfloat16 has float32's exponent range, so gradients neither underflow nor need a loss
    scaler as float16's would; weights, gradients and the optimizer's state stay float32. Never on the CPU, whose
    runs stay bit-exact with plain PyTorch's."""
    return (device.type == "cuda" and training.allows_autocast and type(model).allows_autocast
            and torch.cuda.is_bf16_supported())  # fmt: skip


def forward_precision(device: torch.device, autocast: bool) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """What each forward pass runs under: bfloat16 autocast, or nothing (entering and leaving a disabled autocast
    costs about 4 µs a step here, a ``nullcontext`` 0.4 µs)."""
    return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext


def held_out_count(rows: int) -> int:
    """How many of a dataset's ``rows`` are held out for evaluation (never trained on)."""
    return max(1, round(rows * VALIDATION_FRACTION)) if rows > 1 else 0


def split_rows(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training row indices, held-out row indices) for a dataset of ``rows`` rows."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    held_out = held_out_count(rows)
    return order[held_out:], order[:held_out]


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``count`` training rows."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 65536 + epoch))


class Step(NamedTuple):
    """One optimizer step's rows in this process, and the whole batch they are part of.

    One process trains on every row of a batch. A worker of a group (:mod:`~securetrain.tee.training.group`)
    trains on its part of it, and its gradient counts in proportion to ``rows / batch_rows``.
    """

    features: torch.Tensor
    labels: torch.Tensor
    #: The batch's rows these stand for (in ``train_loss`` and the gradient): ``len(labels)``, or 0 for the zero
    #: row a worker with no rows in the batch steps on.
    rows: int
    #: The rows of the whole batch, every worker's.
    batch_rows: int


#: ``windows(epoch, first)``: (index, steps) of each window of ``epoch`` from window ``first`` on.
Windows = Callable[[int, int], Iterator[tuple[int, Iterable[Step]]]]


def one_window(steps: Callable[[int], Iterable[Step]]) -> Windows:
    """The windows of an epoch that is one window, ``steps(epoch)`` (in memory: nothing cuts an epoch there)."""

    def windows(epoch: int, first: int) -> Iterator[tuple[int, Iterable[Step]]]:
        return iter([(0, steps(epoch))])

    return windows


class _Rows(Dataset[Step]):
    """Rows of the in-memory tensors, fetched a whole (part of a) batch of indices at a time."""

    def __init__(self, data: TrainingData) -> None:
        self._features = data.features
        self._labels = data.labels

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def __getitem__(self, batch: tuple[torch.Tensor, int]) -> Step:  # type: ignore[override]
        indices, batch_rows = batch
        return Step(self._features[indices], self._labels[indices], len(indices), batch_rows)


class _Batches(Sampler[tuple[torch.Tensor, int]]):
    """One epoch's batches in :func:`epoch_order` (the last may be smaller): the indices of worker ``rank`` of
    ``workers``' contiguous part of each (all of it in one process), and the batch's rows."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int, epoch: int, rank: int, workers: int) -> None:
        self._rows, self._batch_size, self._seed, self._epoch = rows, batch_size, seed, epoch
        self._rank, self._workers = rank, workers

    def __len__(self) -> int:
        return math.ceil(len(self._rows) / self._batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        ordered = self._rows[epoch_order(len(self._rows), self._seed, self._epoch)]
        for batch in ordered.split(self._batch_size):
            total = len(batch)
            yield batch[total * self._rank // self._workers : total * (self._rank + 1) // self._workers], total


def _optimizer(model: nn.Module, hyper: Hyperparameters) -> torch.optim.Optimizer:
    if hyper.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=hyper.learning_rate, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=hyper.learning_rate)


@dataclass
class Trainee:
    """A model and its optimizer, built reproducibly for one dataset."""

    model: RegisteredModel
    optimizer: torch.optim.Optimizer
    shape: DataShape


@dataclass(frozen=True)
class Training:
    """What the loop steps through: the plain model and optimizer, or Opacus' DP-SGD wrappers around them.

    An epoch is a sequence of *windows*, each a sequence of steps; a window's end is a point where a
    checkpoint can cut the epoch and a resumed run continue it exactly. In memory an epoch is one window.
    """

    #: The forward pass during training: the model, or Opacus' per-sample-gradient module around it.
    module: nn.Module
    #: The optimizer step: the model's optimizer, or Opacus' clipping and noising optimizer around it.
    optimizer: torch.optim.Optimizer
    #: Each epoch's windows of steps, their batches on the CPU.
    windows: Windows
    #: The training rows of an epoch (what ``train_loss`` is averaged over).
    rows: int
    #: How many windows an epoch has.
    window_count: int = 1
    #: Whether each epoch's metrics carry ``train_loss``. Not under DP-SGD: it is an exact, noiseless
    #: aggregate of the very rows the privacy guarantee protects.
    report_train_loss: bool = True
    #: The DP-SGD accountant's history so far, which each epoch's checkpoint carries (empty without DP-SGD).
    accountant: Callable[[], AccountantHistory] = tuple
    #: Whether the forward pass may run under bfloat16 autocast on a GPU (:func:`mixed_precision`).
    allows_autocast: bool = True


def plain_training(trainee: Trainee, data: TrainingData, train_rows: torch.Tensor, hyper: Hyperparameters,
                   device: torch.device, rank: int = 0, workers: int = 1) -> Training:  # fmt: skip
    """Training without differential privacy: every training row once per epoch, in :func:`epoch_order`; worker
    ``rank`` of ``workers`` trains on its contiguous part of each batch."""

    def steps(epoch: int) -> DataLoader:
        return DataLoader(
            _Rows(data),
            sampler=_Batches(train_rows, hyper.batch_size, hyper.seed, epoch, rank, workers),
            batch_size=None,  # the sampler yields each batch's indices (this process's part of it)
            num_workers=0,
            pin_memory=device.type == "cuda",
        )

    return Training(trainee.model, trainee.optimizer, one_window(steps), len(train_rows))


@dataclass(frozen=True)
class Standardization:
    """Per-feature mean and (population) standard deviation of the training rows."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, data: TrainingData, train_rows: torch.Tensor) -> Standardization:
        train_features = data.features[train_rows]
        return cls(train_features.mean(dim=0), train_features.std(dim=0, correction=0))


def data_shape(data: TrainingData) -> DataShape:
    """The shape of the in-memory dataset's rows and the number of classes its labels imply."""
    return DataShape(data.feature_shape, int(data.labels.max()) + 1)


def build_trainee(
    name: str, params: Mapping[str, Any], hyper: Hyperparameters, shape: DataShape, stats: Standardization,
    device: torch.device,
) -> Trainee:  # fmt: skip
    """Seed, build the model for rows of ``shape`` with standardization ``stats``, make its optimizer."""
    torch.manual_seed(hyper.seed)
    model = build_model(name, params, shape)
    model.standardize.fit(stats.mean, stats.std)
    model.to(device)
    return Trainee(model, _optimizer(model, hyper), shape)


def evaluate(model: nn.Module, data: TrainingData, rows: torch.Tensor, device: torch.device, *,
             precision: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
             ) -> dict[str, float]:  # fmt: skip
    """Loss and accuracy on ``rows`` (the held-out split), each forward pass under ``precision()``
    (:func:`forward_precision`)."""
    if len(rows) == 0:
        return {}
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for batch in rows.split(EVALUATION_BATCH):
            x = data.features[batch].to(device, non_blocking=True)
            y = data.labels[batch].to(device, non_blocking=True)
            with precision():
                logits = model(x).float()  # the loss summed in float32, as training's is
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    return {"val_loss": loss_sum / len(rows), "val_accuracy": correct / len(rows)}


def train(
    trainee: Trainee,
    training: Training,
    held_out: tuple[TrainingData, torch.Tensor],
    hyper: Hyperparameters,
    start: Progress,
    device: torch.device,
    cancel: threading.Event,
    end_of_epoch: Callable[[Progress], None],
    end_of_windows: Callable[[Progress], None] | None = None,
    every_windows: int = 0,
) -> Progress:
    """Train ``trainee`` through ``training`` from ``start`` to ``hyper.epochs`` epochs; ``end_of_epoch(progress)``
    runs after each, and ``end_of_windows(progress)`` after every ``every_windows`` windows of an epoch (not its
    last). ``held_out`` is the data and the rows of it evaluated after each epoch.

    Raises:
        TrainingCancelled: ``cancel`` was set; training stopped before its next step.
    """
    module, optimizer = training.module, training.optimizer
    evaluation_data, held_out_rows = held_out
    autocast = mixed_precision(device, trainee.model, training)
    if autocast:
        log.info("mixed precision: forward passes under bfloat16 autocast, weights and optimizer state in float32")
    precision = forward_precision(device, autocast)
    progress = start
    for epoch in range(start.epoch + 1, hyper.epochs + 1):
        module.train()
        # Summed on the device: reading the loss back every step would stall a GPU.
        loss_sum, step = torch.zeros((), device=device), progress.step
        first_window = progress.windows
        if first_window:  # resumed within the epoch: the loss of its windows so far
            loss_sum += progress.metrics.get("train_loss_sum", 0.0)
        for window, steps in training.windows(epoch, first_window):
            for x, y, rows, _ in steps:
                if cancel.is_set():
                    raise TrainingCancelled(f"cancelled during epoch {epoch} at step {step}; the last checkpoint is intact")
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with precision():
                    loss = nn.functional.cross_entropy(module(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if training.report_train_loss:
                    loss_sum += loss.detach() * rows
                step += 1
            done = window + 1
            if end_of_windows is not None and every_windows and done % every_windows == 0 and done < training.window_count:
                partial = {"train_loss_sum": float(loss_sum)} if training.report_train_loss else {}
                end_of_windows(Progress(epoch - 1, step, partial, training.accountant(), windows=done))
        metrics = evaluate(trainee.model, evaluation_data, held_out_rows, device, precision=precision)
        if training.report_train_loss:
            metrics = {"train_loss": float(loss_sum) / training.rows, **metrics}
        progress = Progress(epoch, step, metrics, training.accountant())
        log.info("epoch %d/%d done at step %d: %s", epoch, hyper.epochs, step,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))  # fmt: skip
        end_of_epoch(progress)
    return progress
