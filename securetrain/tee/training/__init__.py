"""Training inside the TEE: sealed shards to in-memory tensors, validation, training, sealed outputs.

The agent calls :func:`run_training` after attestation and Secure Key Release; the steps are in
docs/trainer.md ("Training inside the TEE").
"""

from __future__ import annotations

import logging
import threading

from securetrain.core.contracts.training import JobKeys, ProgressSink, TrainingCancelled, TrainingResult, TrainingSpec
from securetrain.tee.training.checkpoint import Checkpoints, Progress, seal_model
from securetrain.tee.training.data import DataLimits, load_dataset
from securetrain.tee.training.loop import (
    Standardization,
    build_trainee,
    describe_device,
    make_deterministic,
    plain_training,
    select_device,
    split_rows,
    train,
)
from securetrain.tee.training.privacy import DpSgd, PrivacyPlan, plan_privacy, refuse_unsupported_layers
from securetrain.core.storage import BlobStore
from securetrain.core.validation import validate

__all__ = ["DataLimits", "PrivacyPlan", "plan_privacy", "run_training"]

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

    Raises:
        SealedFileError subclasses: a shard failed its seal (the message names shard and segment);
            nothing was trained.
        DataValidationFailed: the expectation suite failed; nothing was trained.
        PrivacyTermsRefused: the DP-SGD plan breaks a privacy term (its noise is below
            ``spec.min_noise_multiplier``, no noise reaches the ε asked for); refused before the suite runs.
        ModelConfigurationError: the model has a layer DP-SGD cannot train; refused before the suite runs.
        TrainingCancelled: ``cancel`` was set; the checkpoints written so far are intact.
        StorageError subclasses: storage failed after its bounded retries.
    """
    device = select_device()
    make_deterministic(device)
    log.info("run %s: training on %s", spec.run_id, describe_device(device))

    data = load_dataset(spec, keys, store, limits or DataLimits())
    if cancel.is_set():
        raise TrainingCancelled("cancelled after the data was opened, before training")
    hyper = spec.hyperparameters
    rows = split_rows(data.rows, hyper.seed)
    stats = Standardization.of(data, rows[0])
    trainee = build_trainee(spec.model.name, spec.model.params, hyper, data, stats, device)
    # A plan outside the privacy terms is refused before anything about the data (the suite's aggregates) leaves.
    dp: DpSgd | None = None
    if spec.privacy is not None:
        plan = plan_privacy(spec.privacy, data.rows, hyper.batch_size, hyper.epochs, spec.min_noise_multiplier)
        refuse_unsupported_layers(trainee.model, spec.model.name)
        dp = DpSgd(plan, keys, spec.run_id, hyper.seed)
    if spec.expectation_suite is not None:
        aggregates = validate(spec.expectation_suite, data.validation_frame())
    else:
        aggregates = {"suite": None, "success": True, "rows": data.rows}
    progress.validation_done(aggregates)

    checkpoints = Checkpoints(store, spec.checkpoints, spec.run_id, keys)
    accountant_after = dp.plan.history_after if dp is not None else None
    resumed = checkpoints.restore_latest(trainee.model, trainee.optimizer, hyper.epochs, accountant_after)
    if resumed is None:
        # A checkpoint refused half-way may have loaded part of its state: start from a clean build.
        trainee = build_trainee(spec.model.name, spec.model.params, hyper, data, stats, device)
    start = resumed[0] if resumed is not None else Progress(0, 0, {})
    if dp is not None:
        training = dp.training(trainee, data, rows[0], hyper.batch_size, device, start.accountant)
    else:
        training = plain_training(trainee, data, rows[0], hyper, device)

    def end_of_epoch(done: Progress) -> None:
        # The plain model and optimizer: Opacus' wrappers share their parameters and state.
        blob = checkpoints.save(trainee.model, trainee.optimizer, done)
        progress.epoch_done(done.epoch, done.step, done.metrics, blob)

    final = train(trainee, training, data, hyper, rows, start, device, cancel, end_of_epoch)
    if cancel.is_set():
        raise TrainingCancelled(f"cancelled after epoch {final.epoch}, before the model was sealed")
    spent = dp.spent() if dp is not None else None
    progress.sealing_model()
    description = {
        "model": spec.model.name,
        "params": spec.model.model_dump(mode="json")["params"],
        "features": list(data.feature_names),
        "feature_shape": list(trainee.shape.feature_shape),
        "num_classes": trainee.shape.num_classes,
        "label": data.label_name,
        "epochs": final.epoch,
        "steps": final.step,
        "metrics": dict(final.metrics),
    }
    seal_model(store, spec.output, spec.run_id, keys, trainee.model, description, contract=spec.contract)
    return TrainingResult(
        model_blob=spec.output, metrics=dict(final.metrics), device=describe_device(device), epochs_completed=final.epoch,
        steps_completed=final.step, privacy=spent,
    )  # fmt: skip
