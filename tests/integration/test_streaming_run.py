"""run_training on a dataset larger than the TEE's in-memory cache: streamed from Azurite shard by shard.

The dataset and its tiny limits are tests/streamed_shards.py's; the helpers and fixtures are those of
test_training_run (a real BlobStore on the local stack's Azurite, a KEK made here as if released). What storage
can do to a streamed run (a shard tampered with or swapped mid-run) is in
tests/security/test_storage_swaps_streamed_shards.py; a host that changes the data path's settings between a crash
and its resume, in tests/security/test_host_changes_the_data_path_on_resume.py.
"""

from __future__ import annotations

import logging
import re
import threading

import pytest
import torch

from securetrain.core.contracts.training import DataValidationFailed, TrainingCancelled
from securetrain.core.validation import ExpectationSuiteError
from securetrain.tee.training import StreamingRefused, run_training
from securetrain.tee.training.data import DataLimits
from securetrain.tee.training.stream import DataBudgetExceeded
from tests.integration import test_training_run
from tests.integration.test_training_run import CancelAfterChecks, RecordingProgress, checkpoint_names, open_model
from tests.streamed_shards import FEATURES, LIMITS, ROWS, SHARDS, sealed_shards, shard_rows, spec_for

pytestmark = pytest.mark.integration
# The same fixtures: the local stack's BlobStore, and a KEK made here as if released.
store, keys = test_training_run.store, test_training_run.keys


@pytest.fixture(scope="module")
def parquet_shards(store, keys) -> list[str]:
    return sealed_shards(store, keys, "parquet")


def peak_and_budget(text: str) -> tuple[int, int]:
    match = re.search(r"the streamed data path held at most (\d+) bytes of its (\d+)-byte budget", text)
    assert match is not None, "the run did not stream"
    return int(match.group(1)), int(match.group(2))


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "safetensors"])
def test_a_dataset_over_the_cache_trains_by_streaming_within_its_budget(store, keys, fmt, caplog) -> None:
    spec = spec_for(sealed_shards(store, keys, fmt), fmt)
    progress = RecordingProgress()
    with caplog.at_level(logging.INFO, logger="securetrain.tee.training"):
        result = run_training(spec, keys, store, progress, threading.Event(), limits=LIMITS)
    assert "exceed the 10000-byte in-memory cache: streaming it" in caplog.text
    peak, budget = peak_and_budget(caplog.text)
    assert budget == LIMITS.stream_budget_bytes and 0 < peak <= budget
    decoded_dataset = SHARDS * ROWS * (FEATURES * 4 + 8)
    assert budget < 0.7 * decoded_dataset  # the budget, held to, is well below what the dataset decodes to
    # 160 training rows per shard, windows of 2 shards: batches of 64, 64, 64, 64, 64 per window, the last 0.
    assert result.epochs_completed == 2 and result.steps_completed == 2 * 6 * 5
    assert result.metrics["val_accuracy"] > 0.7
    assert progress.calls[0] == ("validation_done", {"suite": None, "success": True, "rows": SHARDS * ROWS})
    # Mid-epoch checkpoints after each window but an epoch's last, and one at each epoch's end.
    names = checkpoint_names(store, spec)
    assert len(names) == 2 * 5 + 2 and f"{spec.run_id}/epoch-0001-window-000003.safetensors.sealed" in names


def test_a_streamed_run_is_reproducible_and_resumes_mid_epoch_to_the_same_weights(store, keys, parquet_shards,
                                                                                   caplog) -> None:  # fmt: skip
    uninterrupted = spec_for(parquet_shards)
    expected_result = run_training(uninterrupted, keys, store, RecordingProgress(), threading.Event(), limits=LIMITS)
    again = spec_for(parquet_shards)
    run_training(again, keys, store, RecordingProgress(), threading.Event(), limits=LIMITS)
    expected, _ = open_model(store, keys, uninterrupted)
    repeated, _ = open_model(store, keys, again)
    assert all(torch.equal(expected[name], repeated[name]) for name in expected)

    resumed = spec_for(parquet_shards)
    # One cancel check after the survey, one before each step: a crash 2 steps into window 4 of epoch 2.
    with pytest.raises(TrainingCancelled, match="during epoch 2 at step 47"):
        run_training(resumed, keys, store, RecordingProgress(), CancelAfterChecks(1 + 30 + 15 + 2), limits=LIMITS)
    progress = RecordingProgress()
    with caplog.at_level(logging.INFO, logger="securetrain.tee.training"):
        result = run_training(resumed, keys, store, progress, threading.Event(), limits=LIMITS)
    assert f"from checkpoints/{resumed.run_id}/epoch-0001-window-000003.safetensors.sealed" in caplog.text
    assert [call[1][0] for call in progress.calls if call[0] == "epoch_done"] == [2]
    assert result.steps_completed == expected_result.steps_completed and result.metrics == expected_result.metrics
    actual, _ = open_model(store, keys, resumed)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_a_streamed_suite_validates_shard_by_shard_with_whole_dataset_counts(store, keys, parquet_shards) -> None:
    suite = {"name": "streamed", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "f0"}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1, 2]}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 2000, "max_value": 2400}},
        {"type": "expect_table_column_count_to_equal", "kwargs": {"value": FEATURES + 1}},
    ]}  # fmt: skip
    progress = RecordingProgress()
    run_training(spec_for(parquet_shards, expectation_suite=suite), keys, store, progress, threading.Event(),
                 limits=LIMITS)  # fmt: skip
    aggregates = progress.calls[0][1]
    assert aggregates["success"] and aggregates["rows"] == SHARDS * ROWS and aggregates["validated"] == "per shard"
    not_null, in_set, row_count, column_count = aggregates["expectations"]
    assert not_null["element_count"] == in_set["element_count"] == SHARDS * ROWS
    assert in_set["unexpected_count"] == 0 and in_set["unexpected_percent"] == 0
    assert row_count["success"] and row_count["observed_value"] == SHARDS * ROWS
    assert column_count["success"] and column_count["observed_value"] == FEATURES + 1


def test_a_streamed_suite_that_fails_in_one_shard_fails_with_the_summed_counts(store, keys, parquet_shards) -> None:
    suite = {"name": "strict", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "f3", "max_value": 2.5}},
    ]}  # fmt: skip
    spec = spec_for(parquet_shards, expectation_suite=suite)
    with pytest.raises(DataValidationFailed, match=r"expect_column_values_to_be_between\(f3\)") as err:
        run_training(spec, keys, store, RecordingProgress(), threading.Event(), limits=LIMITS)
    (result,) = err.value.aggregates["expectations"]
    above = sum(int((shard_rows(i)[0][:, 3] > 2.5).sum()) for i in range(SHARDS))
    assert result["element_count"] == SHARDS * ROWS and result["unexpected_count"] == above > 0
    assert checkpoint_names(store, spec) == []


@pytest.mark.parametrize(("expectation", "reason"), [
    ({"type": "expect_column_mean_to_be_between", "kwargs": {"column": "f0", "min_value": -1, "max_value": 1}},
     "a statistic of the whole column"),
    ({"type": "expect_column_values_to_be_unique", "kwargs": {"column": "f0"}}, "a statistic of the whole column"),
    ({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "f0", "mostly": 0.9}}, "'mostly' below 1"),
])  # fmt: skip
def test_what_cannot_be_validated_per_shard_is_refused_before_any_shard_is_read(store, keys, parquet_shards,
                                                                                expectation, reason) -> None:  # fmt: skip
    spec = spec_for(parquet_shards, expectation_suite={"name": "s", "expectations": [expectation]})
    progress = RecordingProgress()
    with pytest.raises(ExpectationSuiteError, match=f"cannot be validated on a dataset streamed shard by shard: .*{reason}"):
        run_training(spec, keys, store, progress, threading.Event(), limits=LIMITS)
    assert progress.calls == []


def test_dp_sgd_on_a_streamed_dataset_is_refused_naming_the_way_out(store, keys, parquet_shards) -> None:
    privacy = {"epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}
    spec = spec_for(parquet_shards, privacy=privacy)
    with pytest.raises(StreamingRefused, match="DP-SGD needs the dataset in memory .* use a dataset within the cache"):
        run_training(spec, keys, store, RecordingProgress(), threading.Event(), limits=LIMITS)


def test_a_budget_too_small_for_the_window_is_refused_before_any_plaintext(store, keys, parquet_shards) -> None:
    tiny = DataLimits(cache_bytes=10_000, stream_budget_bytes=20_000, shards_in_flight=2, window_shards=4)
    progress = RecordingProgress()
    with pytest.raises(DataBudgetExceeded, match=r"\(4 window \+ 2 in flight \+ 1\) x \d+ bytes"):
        run_training(spec_for(parquet_shards), keys, store, progress, threading.Event(), limits=tiny)
    assert progress.calls == []
