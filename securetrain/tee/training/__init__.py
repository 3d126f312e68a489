"""Training inside the TEE: sealed shards to in-memory tensors or a stream of them, validation, training, sealed
outputs.

The agent calls :func:`run_training` after attestation and Secure Key Release; the steps are in
docs/trainer.md ("Training inside the TEE").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from securetrain.core.contracts.training import JobKeys, ProgressSink, TrainingCancelled, TrainingResult, TrainingSpec
from securetrain.core.errors import ConfigurationError
from securetrain.core.sealed import OpenedHeader
from securetrain.tee.training.checkpoint import Checkpoints, Progress, WindowCut, seal_model
from securetrain.tee.settings import DataPathSettings, WorkerSettings
from securetrain.tee.training.data import DataLimits, TrainingData, load_dataset, open_shard_headers
from securetrain.tee.training.loop import (
    Standardization,
    Trainee,
    Training,
    build_trainee,
    data_shape,
    describe_device,
    make_deterministic,
    plain_training,
    select_device,
    split_rows,
    train,
)
from securetrain.tee.training.lanes import Lanes
from securetrain.tee.training.models import DataShape
from securetrain.tee.training.stream import BufferLedger, ShardStream
from securetrain.tee.training.survey import Survey, survey
from securetrain.core.storage import BlobStore
from securetrain.core.validation import validate

if TYPE_CHECKING:
    from securetrain.tee.training.group import DataParallelGroup
    from securetrain.tee.training.privacy import DpSgd

__all__ = ["DataLimits", "StreamingRefused", "run_training"]

log = logging.getLogger(__name__)


def run_training(
    spec: TrainingSpec,
    keys: JobKeys,
    store: BlobStore,
    progress: ProgressSink,
    cancel: threading.Event,
    *,
    limits: DataLimits | None = None,
) -> TrainingResult:
    """Train the model ``spec`` describes on its sealed dataset; return where the sealed model is.

    Calling it again for the same spec (after a crash or a cancel) resumes from the newest checkpoint that opens and verifies.
    With ``SECURETRAIN_TRAINING_WORKERS`` > 1 the job trains in that many worker processes (docs/trainer.md,
    "Several workers in one TEE"), which fail as this function does.

    A dataset above ``limits.cache_bytes`` of plaintext is streamed shard by shard every epoch (docs/trainer.md,
    "The data path").

    Raises:
        SealedFileError subclasses: a shard failed its seal (the message names shard and segment);
            nothing was trained in memory; streamed, no row of that shard was trained on.
        ShardChanged: streamed, storage served another sealed file under a shard's name than the run read first.
        StreamingRefused: DP-SGD asked for on a dataset above the in-memory cache; refused before any plaintext.
        DataBudgetExceeded: the streaming path would hold more than its budget.
        DataValidationFailed: the expectation suite failed; nothing was trained.
        PrivacyTermsRefused: the DP-SGD plan breaks a privacy term (its noise is below
            ``spec.min_noise_multiplier``, no noise reaches the ε asked for); refused before the suite runs.
        ModelConfigurationError: the model has a layer DP-SGD cannot train; refused before the suite runs.
        TrainingCancelled: ``cancel`` was set; the checkpoints written so far are intact.
        StorageError subclasses: storage failed after its bounded retries.
        DataParallelRefused: several workers and a DP-SGD job.
        LanesRefused: streamed with a batch size below ``SECURETRAIN_DATA_LANES``, or with several workers and lanes
            that are not a multiple of ``SECURETRAIN_TRAINING_WORKERS``; refused before any training.
        WorkersFailed: several workers, and the group kept losing one after its restarts.
    """
    limits = limits or DataLimits(**DataPathSettings.load().overrides())
    workers = WorkerSettings.load()
    if workers.training_workers > 1:
        from securetrain.tee.training.launcher import run_workers  # noqa: PLC0415 - only with several workers

        return run_workers(spec, keys, store, progress, cancel, workers, limits)
    return train_in_process(spec, keys, store, progress, cancel, limits=limits)


def train_in_process(
    spec: TrainingSpec,
    keys: JobKeys,
    store: BlobStore,
    progress: ProgressSink,
    cancel: threading.Event,
    *,
    limits: DataLimits,
    group: DataParallelGroup | None = None,
    surveyed: Survey | None = None,
    opened: tuple[OpenedHeader, ...] | None = None,
) -> TrainingResult:
    """:func:`run_training` in this process: alone, or as one worker of ``group`` (whose leader alone writes
    checkpoints and the model). A streamed dataset is surveyed here, unless ``surveyed`` is the launcher's survey
    of it; the shards' headers are opened here, unless ``opened`` are the ones a worker opened and checked."""
    device = select_device()
    make_deterministic(device)
    log.info("run %s: training on %s", spec.run_id, describe_device(device))
    hyper = spec.hyperparameters

    headers = opened if opened is not None else open_shard_headers(spec, keys, store)
    sizes = tuple(header.header.content.plaintext_length for header in headers)
    if not limits.streams(sum(sizes)):
        log.info("run %s: the dataset's %d plaintext bytes in %d shards fit the %d-byte in-memory cache: reading it "
                 "into memory", spec.run_id, sum(sizes), len(sizes), limits.cache_bytes)  # fmt: skip
        prepared = _in_memory(spec, keys, store, limits, headers, device, cancel, _place(group))
    else:
        log.info("run %s: the dataset's %d plaintext bytes in %d shards exceed the %d-byte in-memory cache: streaming "
                 "it (budget %d bytes, %d shards in flight, windows of %d shards in %d lanes)", spec.run_id, sum(sizes),
                 len(sizes), limits.cache_bytes, limits.stream_budget_bytes, limits.shards_in_flight,
                 limits.window_shards, limits.lanes)  # fmt: skip
        prepared = _streamed(spec, store, limits, headers, device, cancel, _place(group), surveyed)
    progress.validation_done(prepared.aggregates)

    def build() -> Trainee:
        return build_trainee(spec.model.name, spec.model.params, hyper, prepared.shape, prepared.stats, device)

    trainee = prepared.trainee
    dp = prepared.dp
    # A mid-epoch checkpoint's windows are a position in the streamed order, which these settings shape.
    cut = WindowCut(limits.window_shards, limits.lanes) if prepared.ledger is not None else None
    checkpoints = Checkpoints(store, spec.checkpoints, spec.run_id, keys, cut)
    accountant_after = dp.plan.history_after if dp is not None else None
    resumed = checkpoints.restore_latest(trainee.model, trainee.optimizer, hyper.epochs, accountant_after,
                                         mid_epoch=prepared.ledger is not None)  # fmt: skip
    if resumed is None:
        # A checkpoint refused half-way may have loaded part of its state: start from a clean build.
        trainee = build()
    start = resumed[0] if resumed is not None else Progress(0, 0, {})
    training = prepared.training(trainee, start)
    if group is not None:
        training, start = group.share(training, start)
    leads = group is None or group.leads
    # The newest epoch's progress with the group's row sums (the loop's own is this worker's alone).
    combined = [start]

    def end_of_epoch(done: Progress) -> None:
        done = combined[0] = group.combine(done) if group is not None else done
        if leads:
            # The plain model and optimizer: Opacus' wrappers share their parameters and state.
            blob = checkpoints.save(trainee.model, trainee.optimizer, done)
            progress.epoch_done(done.epoch, done.step, done.metrics, blob)
        if group is not None:
            # The leader's report returns once the agent has checked the epoch's end (a contract still in force):
            # no worker reads the next epoch's data before that.
            group.barrier()

    def end_of_windows(done: Progress) -> None:
        done = group.combine(done) if group is not None else done
        if leads:
            checkpoints.save(trainee.model, trainee.optimizer, done)

    final = train(trainee, training, prepared.held_out, hyper, start, device, cancel, end_of_epoch, end_of_windows,
                  limits.checkpoint_windows)  # fmt: skip
    if prepared.ledger is not None:
        log.info("run %s: the streamed data path held at most %d bytes of its %d-byte budget", spec.run_id,
                 prepared.ledger.peak, prepared.ledger.budget)  # fmt: skip
    if cancel.is_set():
        raise TrainingCancelled(f"cancelled after epoch {final.epoch}, before the model was sealed")
    spent = dp.spent() if dp is not None else None
    if group is not None:
        final = combined[0]
    progress.sealing_model()
    description = {
        "model": spec.model.name,
        "params": spec.model.model_dump(mode="json")["params"],
        "features": list(prepared.feature_names),
        "feature_shape": list(trainee.shape.feature_shape),
        "num_classes": trainee.shape.num_classes,
        "label": spec.columns.label,
        "epochs": final.epoch,
        "steps": final.step,
        "metrics": dict(final.metrics),
        # The TEE's own settings (not measured) that shaped the row order or the sums: a reviewer repeating the run
        # needs them, and the sealed description is where a reader of the model finds them.
        "data_path": _data_path(prepared.ledger is not None, limits, group),
    }
    if leads:
        seal_model(store, spec.output, spec.run_id, keys, trainee.model, description, contract=spec.contract)
    return TrainingResult(
        model_blob=spec.output, metrics=dict(final.metrics), device=describe_device(device), epochs_completed=final.epoch,
        steps_completed=final.step, privacy=spent,
    )  # fmt: skip


def _data_path(streamed: bool, limits: DataLimits, group: DataParallelGroup | None) -> dict[str, Any]:
    """How the data reached the model: in memory or streamed (with the window settings that fix the order), and
    in how many workers."""
    path: dict[str, Any] = {"streamed": streamed, "workers": group.world_size if group is not None else 1}
    if streamed:
        path.update(window_shards=limits.window_shards, lanes=limits.lanes)
    return path


def _place(group: DataParallelGroup | None) -> tuple[int, int]:
    """(rank, workers) of this process: (0, 1) alone."""
    return (group.rank, group.world_size) if group is not None else (0, 1)


class StreamingRefused(ConfigurationError):
    """What the job asks cannot be done on a dataset streamed shard by shard."""


@dataclass(frozen=True)
class _Prepared:
    """The data opened and validated, and what training over it needs."""

    shape: DataShape
    stats: Standardization
    feature_names: tuple[str, ...]
    #: The data and the rows of it evaluated after each epoch.
    held_out: tuple[TrainingData, torch.Tensor]
    aggregates: dict[str, Any]
    trainee: Trainee
    dp: DpSgd | None
    #: ``training(trainee, start)``: what the loop steps through, from checkpoint progress ``start``.
    training: Callable[[Trainee, Progress], Training]
    #: What the streaming path holds against its budget (None in memory).
    ledger: BufferLedger | None = None


def _in_memory(spec: TrainingSpec, keys: JobKeys, store: BlobStore, limits: DataLimits,
               headers: tuple[OpenedHeader, ...], device: torch.device, cancel: threading.Event,
               place: tuple[int, int]) -> _Prepared:  # fmt: skip
    """The whole dataset decrypted into memory: a seeded 20% of its rows held out, DP-SGD possible (in one
    process); worker ``place`` = (rank, workers) of a group trains on its part of each batch."""
    data = load_dataset(spec, headers, store, limits)
    if cancel.is_set():
        raise TrainingCancelled("cancelled after the data was opened, before training")
    hyper = spec.hyperparameters
    rows = split_rows(data.rows, hyper.seed)
    stats = Standardization.of(data, rows[0])
    shape = data_shape(data)
    trainee = build_trainee(spec.model.name, spec.model.params, hyper, shape, stats, device)
    # A plan outside the privacy terms is refused before anything about the data (the suite's aggregates) leaves.
    dp: DpSgd | None = None
    if spec.privacy is not None:
        # Imported for a DP-SGD job only: Opacus (and the SciPy it loads) is a second of a training worker's start,
        # and a worker never trains DP-SGD.
        from securetrain.tee.training.privacy import DpSgd, plan_privacy, refuse_unsupported_layers  # noqa: PLC0415

        plan = plan_privacy(spec.privacy, data.rows, hyper.batch_size, hyper.epochs, spec.min_noise_multiplier)
        refuse_unsupported_layers(trainee.model, spec.model.name)
        dp = DpSgd(plan, keys, spec.run_id, hyper.seed)
    if spec.expectation_suite is not None:
        aggregates = validate(spec.expectation_suite, data.validation_frame())
    else:
        aggregates = {"suite": None, "success": True, "rows": data.rows}

    def training(trainee: Trainee, start: Progress) -> Training:
        if dp is not None:
            return dp.training(trainee, data, rows[0], hyper.batch_size, device, start.accountant)
        return plain_training(trainee, data, rows[0], hyper, device, *place)

    return _Prepared(shape, stats, data.feature_names, (data, rows[1]), aggregates, trainee, dp, training)


def _streamed(spec: TrainingSpec, store: BlobStore, limits: DataLimits, headers: tuple[OpenedHeader, ...],
              device: torch.device, cancel: threading.Event, place: tuple[int, int],
              surveyed: Survey | None) -> _Prepared:  # fmt: skip
    """The dataset streamed shard by shard every epoch (docs/trainer.md, "The data path"); worker ``place`` = (rank,
    workers) of a group reads only its lanes' shards, and the survey is the launcher's (``surveyed``)."""
    sizes = [opened.header.content.plaintext_length for opened in headers]
    if spec.privacy is not None:
        # Opacus' DP-SGD samples each batch from the whole dataset (Poisson sampling, every row with the same
        # probability at every step): the accounting that bounds epsilon assumes it, and a shuffle window is not it.
        raise StreamingRefused(
            f"DP-SGD needs the dataset in memory (Poisson sampling over all of its rows at every step), and its "
            f"{sum(sizes)} plaintext bytes exceed the TEE's {limits.cache_bytes}-byte in-memory cache; use a "
            "dataset within the cache, or a TEE configured with a larger SECURETRAIN_DATA_CACHE_BYTES"
        )
    hyper = spec.hyperparameters
    lanes = Lanes.of(limits.lanes, hyper.batch_size, *place)
    stream = ShardStream(spec, store, limits, headers, lanes)
    if surveyed is None:
        surveyed = survey(spec, stream, cancel)
    else:
        # The launcher's held-out sample is held here as the survey would have held it.
        held = surveyed.dataset.held_out
        stream.ledger.hold(held.features.nbytes + held.labels.nbytes, "the held-out sample")
    dataset, aggregates = surveyed.dataset, surveyed.aggregates
    trainee = build_trainee(spec.model.name, spec.model.params, hyper, dataset.shape, dataset.stats, device)
    held_out = (dataset.held_out, torch.arange(dataset.held_out.rows))

    def training(trainee: Trainee, start: Progress) -> Training:
        return stream.training(trainee, dataset, hyper.seed)

    return _Prepared(dataset.shape, dataset.stats, dataset.feature_names, held_out, aggregates, trainee, None, training,
                     stream.ledger)  # fmt: skip
