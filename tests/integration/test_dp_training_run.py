"""DP-SGD through run_training against Azurite: the ε spent, the noise floor, resume, the sealed model's names.

The data is breast-cancer sealed by the stack's data owner, the KEK released to this process as to a TEE.
What needs no storage (the plan, clipping, unsupported layers, the checkpoint's accountant) is in
tests/unit/test_dp_training.py.
"""

from __future__ import annotations

import threading

import pytest
import safetensors.torch
from opacus.accountants import create_accountant

from securetrain.core.contracts.training import JobKeys, PrivacyTermsRefused
from securetrain.core.sealed import SealedReader
from securetrain.tee.training import run_training
from securetrain.tee.training.checkpoint import safetensors_metadata
from securetrain.tee.training.privacy import plan_privacy
from tests.integration.test_training_run import CancelAfterChecks, RecordingProgress, open_model, run_id, training_spec
from tests.jobs import released_kek

pytestmark = pytest.mark.integration

PRIVACY = {"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0}
ROWS = 569  # breast-cancer


@pytest.fixture(scope="module")
def keys(local_stack) -> JobKeys:
    kek_id = local_stack.env["SECURETRAIN_KEK_ID"]
    return JobKeys.from_released(released_kek(local_stack, kek_id), kek_id)


def private_spec(shard, accountant: str = "prv", run: str | None = None, **changes):
    return training_spec(run or run_id(), [shard.blob], privacy={**PRIVACY, "accountant": accountant},
                         model={"params": {"hidden": [16], "dropout": 0.2}}, **changes)  # fmt: skip


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_a_private_run_reports_the_epsilon_its_accountant_computes_for_the_steps_taken(store, keys, shard,
                                                                                       accountant) -> None:  # fmt: skip
    spec = private_spec(shard, accountant)
    progress = RecordingProgress()

    result = run_training(spec, keys, store, progress, threading.Event())

    plan = plan_privacy(spec.privacy, ROWS, 64, 3)
    spent = result.privacy
    assert spent is not None and spent.accountant == accountant
    assert (spent.noise_multiplier, spent.sample_rate) == (plan.noise_multiplier, plan.sample_rate)
    assert spent.steps == result.steps_completed == 3 * plan.steps_per_epoch == 3 * 8
    recomputed = create_accountant(accountant)
    recomputed.history = [(spent.noise_multiplier, spent.sample_rate, spent.steps)]
    assert spent.epsilon == recomputed.get_epsilon(PRIVACY["delta"]) == plan.epsilon
    assert 0 < spent.epsilon <= PRIVACY["epsilon"]
    assert (spent.delta, spent.max_grad_norm) == (PRIVACY["delta"], PRIVACY["max_grad_norm"])
    # Utility survives the noise on this easy table; the training loss, a noiseless aggregate, is not reported.
    assert result.metrics["val_accuracy"] > 0.8 and "train_loss" not in result.metrics
    assert all("train_loss" not in call[1][2] for call in progress.calls if call[0] == "epoch_done")
    # The sealed model holds the plain module's names, not Opacus' wrapper's ("_module.").
    weights, _ = open_model(store, keys, spec)
    assert set(weights) == {"standardize.mean", "standardize.std", "layers.1.weight", "layers.1.bias",
                            "layers.4.weight", "layers.4.bias"}  # fmt: skip
    # Each epoch's checkpoint carries the accountant's history for the steps up to it.
    last = f"{spec.run_id}/epoch-0003.safetensors.sealed"
    with store.open_read("checkpoints", last) as src:
        reader = SealedReader(src, keys.kek_private, expected_context={"run_id": spec.run_id, "kind": "checkpoint",
                                                                       "epoch": "3"})  # fmt: skip
        payload = b"".join(bytes(segment) for segment in reader.segments())
    assert safetensors_metadata(payload)["accountant"] == f"[[{plan.noise_multiplier}, {plan.sample_rate}, 24]]"
    assert not any(name.startswith("model._module.") for name in safetensors.torch.load(payload))


def test_a_private_run_resumed_mid_epoch_reaches_the_same_weights_and_epsilon(store, keys, shard) -> None:
    resumed = private_spec(shard)
    # The batches and the noise derive from the run id: the uninterrupted run is the same run, stored elsewhere.
    uninterrupted = private_spec(shard, run=resumed.run_id, checkpoints={"prefix": f"reference-{resumed.run_id}/"},
                                 output={"blob": f"{resumed.run_id}/reference-model.sealed"})  # fmt: skip
    expected = run_training(uninterrupted, keys, store, RecordingProgress(), threading.Event())

    # One cancel check once the data is open, then one before each of the 8 steps per epoch: stop in epoch 3.
    with pytest.raises(Exception, match="during epoch 3 at step 19"):
        run_training(resumed, keys, store, RecordingProgress(), CancelAfterChecks(1 + 2 * 8 + 3))
    progress = RecordingProgress()
    result = run_training(resumed, keys, store, progress, threading.Event())

    assert [call[1][0] for call in progress.calls if call[0] == "epoch_done"] == [3]
    assert result.privacy == expected.privacy and result.metrics == expected.metrics
    weights, resumed_weights = open_model(store, keys, uninterrupted)[0], open_model(store, keys, resumed)[0]
    assert weights.keys() == resumed_weights.keys()
    assert all(bool((weights[name] == resumed_weights[name]).all()) for name in weights)


def test_a_plan_below_the_noise_floor_is_refused_before_the_suite_or_any_step(store, keys, shard) -> None:
    suite = {"name": "bc", "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}}]}
    spec = private_spec(shard, expectation_suite=suite).model_copy(update={"min_noise_multiplier": 5.0})
    progress = RecordingProgress()

    with pytest.raises(PrivacyTermsRefused, match="privacy term 'noise_multiplier_min': .* below the floor 5.0") as refused:
        run_training(spec, keys, store, progress, threading.Event())

    assert refused.value.term == "noise_multiplier_min" and refused.value.security_violation
    assert progress.calls == []
    assert not list(store.list_blobs("checkpoints", spec.checkpoints.prefix))


def test_without_privacy_the_result_has_none(store, keys, shard) -> None:
    spec = training_spec(run_id(), [shard.blob], hyperparameters={"epochs": 1})
    result = run_training(spec, keys, store, RecordingProgress(), threading.Event())
    assert result.privacy is None and "train_loss" in result.metrics
