"""DP-SGD pieces that need no storage: the plan and its refusals, clipping, unsupported layers, the run's
randomness and the accountant history a checkpoint carries. run_training end to end: tests/integration/test_dp_training_run.py."""

from __future__ import annotations

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import rsa
from opacus.accountants.utils import get_noise_multiplier
from torch import nn

from securetrain.core.contracts.job_spec import Hyperparameters, PrivacyRequest
from securetrain.core.contracts.training import JobKeys, PrivacyTermsRefused
from securetrain.core.sealed import KekPrivateKey
from securetrain.tee.training.checkpoint import CheckpointInvalid, Progress, encode_checkpoint, restore_checkpoint
from securetrain.tee.training.data import TrainingData
from securetrain.tee.training.loop import Standardization, build_trainee, data_shape, split_rows
from securetrain.tee.training.models import DataShape, ModelConfigurationError, build_model
from securetrain.tee.training.privacy import DpSgd, PrivacyPlan, plan_privacy, refuse_unsupported_layers

REQUEST = PrivacyRequest(epsilon=3.0, delta=1e-5, max_grad_norm=1.0, accountant="rdp")
RUN = "manual__2026-01-01"


def job_keys() -> JobKeys:
    kek = KekPrivateKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return JobKeys.from_released(kek, "https://vault.test/keys/kek/1")


def table(rows: int, scale: float = 1.0) -> TrainingData:
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(rows, 4, generator=generator) * scale
    labels = (features[:, 0] > 0).long()
    names = ("a", "b", "c", "d")
    return TrainingData(features, labels, names, names, "label")


def test_the_plan_is_opacus_noise_for_its_sample_rate_and_epochs_and_spends_at_most_the_epsilon_asked() -> None:
    plan = plan_privacy(REQUEST, rows=569, batch_size=64, epochs=3)

    # 569 rows less 114 held out: 455 training rows, 8 batches of 64, each row sampled with probability 1/8.
    assert (plan.sample_rate, plan.steps_per_epoch, plan.steps) == (1 / 8, 8, 24)
    assert plan.noise_multiplier == get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=1 / 8,
                                                         epochs=3, accountant="rdp")  # fmt: skip
    assert 2.9 < plan.epsilon <= 3.0
    assert plan.spent(plan.history_after(8)).epsilon < plan.epsilon  # an epoch spends part of it


def test_a_plan_below_the_noise_floor_is_refused_naming_the_term() -> None:
    noise = plan_privacy(REQUEST, rows=569, batch_size=64, epochs=3).noise_multiplier
    assert plan_privacy(REQUEST, 569, 64, 3, min_noise_multiplier=noise).noise_multiplier == noise

    with pytest.raises(PrivacyTermsRefused, match="privacy term 'noise_multiplier_min': the plan's noise") as refused:
        plan_privacy(REQUEST, 569, 64, 3, min_noise_multiplier=noise + 0.01)
    assert refused.value.term == "noise_multiplier_min" and refused.value.security_violation
    # More epochs need more noise for the same epsilon: that plan clears the floor.
    assert plan_privacy(REQUEST, 569, 64, 30, min_noise_multiplier=noise + 0.01).noise_multiplier > noise


def test_an_epsilon_no_noise_can_reach_is_refused() -> None:
    request = PrivacyRequest(epsilon=1e-4, delta=1e-12, max_grad_norm=1.0, accountant="rdp")
    with pytest.raises(PrivacyTermsRefused, match="privacy term 'epsilon': no noise multiplier reaches"):
        plan_privacy(request, 569, 64, 50)


def test_a_model_opacus_cannot_train_is_refused_naming_its_layer_and_left_as_it_was() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ModelConfigurationError, match=r"model 'bn' cannot be trained with DP-SGD: layer '1' \(BatchNorm1d\)"):
        refuse_unsupported_layers(model, "bn")
    assert isinstance(model[1], nn.BatchNorm1d)  # not "fixed" into a GroupNorm behind the job's back
    refuse_unsupported_layers(build_model("cnn", {}, DataShape((1, 8, 8), 10)), "cnn")
    refuse_unsupported_layers(build_model("mlp", {"dropout": 0.5}, DataShape((4,), 2)), "mlp")


def private_training(data: TrainingData, plan: PrivacyPlan, keys: JobKeys, batch_size: int, lr: float = 0.1):
    hyper = Hyperparameters(epochs=plan.epochs, batch_size=batch_size, learning_rate=lr, seed=7, optimizer="sgd")
    rows = split_rows(data.rows, hyper.seed)
    trainee = build_trainee("mlp", {"hidden": [8]}, hyper, data_shape(data), Standardization.of(data, rows[0]), torch.device("cpu"))
    dp = DpSgd(plan, keys, RUN, hyper.seed)
    return trainee, dp, dp.training(trainee, data, rows[0], batch_size, torch.device("cpu"), ())


def test_every_sample_gradient_is_clipped_to_max_grad_norm() -> None:
    # No noise, so that the step's gradient is exactly the clipped per-sample gradients' sum over the expected batch.
    request = PrivacyRequest(epsilon=3.0, delta=1e-5, max_grad_norm=0.05)
    plan = PrivacyPlan(request, noise_multiplier=0.0, sample_rate=1 / 4, steps_per_epoch=4, epochs=1)
    _, _, training = private_training(table(200), plan, job_keys(), batch_size=40)
    x, y, *_ = next(step for _, steps in training.windows(1, 0) for step in steps)
    loss = nn.functional.cross_entropy(training.module(x), 1 - y)  # wrong labels: large gradients
    training.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    samples = [g.detach().clone() for g in training.optimizer.grad_samples]
    norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in samples], 1).norm(dim=1)
    assert bool((norms > 5 * request.max_grad_norm).all())  # every sample's gradient is beyond the bound

    training.optimizer.step()

    scale = (request.max_grad_norm / norms).clamp(max=1.0)  # each sample scaled to norm max_grad_norm
    clipped_norms = torch.stack([(g * scale.view(-1, *[1] * (g.dim() - 1))).reshape(len(g), -1).norm(dim=1)
                                 for g in samples], 1).norm(dim=1)  # fmt: skip
    assert torch.allclose(clipped_norms, torch.full_like(clipped_norms, request.max_grad_norm), rtol=1e-4)
    for param, sample in zip(training.optimizer.params, samples, strict=True):
        expected = torch.einsum("i,i...", scale, sample) / training.optimizer.expected_batch_size
        assert torch.allclose(param.grad, expected, rtol=1e-4, atol=1e-7)


def test_dp_sgd_never_trains_under_autocast() -> None:
    _, _, training = private_training(table(200), plan_privacy(REQUEST, 200, 40, 1), job_keys(), batch_size=40)
    assert not training.allows_autocast  # per-sample gradients and their clipping stay float32, on a GPU too


def test_batches_are_poisson_samples_and_batches_and_noise_replay_per_epoch_under_the_same_kek() -> None:
    data, keys = table(500), job_keys()
    plan = plan_privacy(REQUEST, data.rows, 50, 2)

    def epoch_batches(keys: JobKeys, epoch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        trainee, _, training = private_training(data, plan, keys, batch_size=50)
        labels = [step.labels for _, steps in training.windows(epoch, 0) for step in steps]
        x, y = data.features[:50], data.labels[:50]
        nn.functional.cross_entropy(training.module(x), y).backward()
        training.optimizer.step()
        return labels, trainee.model.layers[1].weight.detach().clone()

    first, again, next_epoch, other_kek = epoch_batches(keys, 1), epoch_batches(keys, 1), epoch_batches(keys, 2), \
        epoch_batches(job_keys(), 1)  # fmt: skip
    sizes = [len(y) for y in first[0]]
    assert len(sizes) == plan.steps_per_epoch == 8 and len(set(sizes)) > 1  # Poisson: the batch size varies
    assert all(torch.equal(a, b) for a, b in zip(first[0], again[0], strict=True)) and torch.equal(first[1], again[1])
    assert sizes != [len(y) for y in next_epoch[0]] and not torch.equal(first[1], next_epoch[1])
    assert sizes != [len(y) for y in other_kek[0]] and not torch.equal(first[1], other_kek[1])


def trained_mlp() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(1)
    model = build_model("mlp", {"hidden": [8]}, DataShape((4,), 2))
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def test_the_checkpoint_carries_the_accountant_history_and_resume_checks_it_against_the_plan() -> None:
    plan = plan_privacy(REQUEST, 569, 64, 3)
    model, optimizer = trained_mlp()
    progress = Progress(2, 16, {"val_loss": 0.5}, plan.history_after(16))
    payload = encode_checkpoint(model, optimizer, progress, RUN)

    assert restore_checkpoint(payload, *trained_mlp(), RUN, 2, plan.history_after) == progress
    # Another plan (another noise or sample rate) or no privacy at all: the checkpoint is not this job's.
    other = plan_privacy(REQUEST, 569, 32, 3)
    with pytest.raises(CheckpointInvalid, match="accountant history .* is not this job's"):
        restore_checkpoint(payload, *trained_mlp(), RUN, 2, other.history_after)
    with pytest.raises(CheckpointInvalid, match="accountant history"):
        restore_checkpoint(payload, *trained_mlp(), RUN, 2)
    plain = encode_checkpoint(model, optimizer, Progress(2, 16, {}), RUN)
    with pytest.raises(CheckpointInvalid, match=r"accountant history \[\] is not this job's"):
        restore_checkpoint(plain, *trained_mlp(), RUN, 2, plan.history_after)
