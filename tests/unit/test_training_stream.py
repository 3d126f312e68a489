"""The streaming path's pieces: seeded splits and orders, lanes, float64 standardization, the held-out sample, the
budget's ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securetrain.tee.training.loop import held_out_count
from securetrain.tee.training.lanes import Lanes, LanesRefused
from securetrain.tee.training import stream
from securetrain.tee.training.data import ShardArrays
from securetrain.tee.training.stream import (
    BufferLedger, DataBudgetExceeded, _generator, _HeldOutSample, _Moments, _steps, shard_order, shard_split,
    window_batches,
)  # fmt: skip


def test_each_shard_holds_out_its_share_by_a_seeded_permutation_of_its_own() -> None:
    training, held = shard_split(200, seed=3, shard=5)
    assert len(held) == held_out_count(200) == 40 and len(training) == 160
    assert sorted(torch.cat([training, held]).tolist()) == list(range(200))
    assert torch.equal(shard_split(200, 3, 5)[1], held)
    assert not torch.equal(shard_split(200, 3, 6)[1], held) and not torch.equal(shard_split(200, 4, 5)[1], held)


def test_the_shard_order_is_a_permutation_per_seed_and_epoch() -> None:
    orders = [shard_order(16, seed=1, epoch=epoch) for epoch in (1, 2)]
    assert all(sorted(order) == list(range(16)) for order in orders) and orders[0] != orders[1]
    assert shard_order(16, 1, 1) == orders[0]


def test_standardization_merged_shard_by_shard_equals_the_whole_columns() -> None:
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=(rows, 3)) * 100 + 1e4).astype(np.float32) for rows in (7, 1, 300, 42)]
    moments = _Moments()
    for part in parts:
        moments.add(part)
    whole = torch.from_numpy(np.concatenate(parts)).double()
    stats = moments.standardization()
    assert torch.allclose(stats.mean.double(), whole.mean(0), rtol=1e-6)
    assert torch.allclose(stats.std.double(), whole.std(0, correction=0), rtol=1e-5)


def test_standardization_of_chosen_rows_widened_a_chunk_at_a_time_equals_theirs_widened_at_once(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    features = (rng.normal(size=(500, 2, 3)) * 10 + 1e3).astype(np.float32)
    rows = rng.permutation(500)[:357]
    monkeypatch.setattr(stream, "MOMENT_CHUNK_BYTES", 8 * 6 * 40)  # chunks of 40 rows, the last one shorter
    chunked = _Moments()
    chunked.add_rows(features, rows)
    whole = torch.from_numpy(features[rows].reshape(len(rows), -1)).double()
    stats = chunked.standardization()
    # float64 throughout, float32 at the end: a chunk left out or counted twice moves them by far more.
    assert torch.allclose(stats.mean, whole.mean(0).float(), rtol=1e-6)
    assert torch.allclose(stats.std, whole.std(0, correction=0).float(), rtol=1e-6)


def test_the_held_out_sample_keeps_each_shards_first_held_out_rows_up_to_its_quota_in_arrays_made_once() -> None:
    ledger = BufferLedger(1 << 20)
    row_bytes = 3 * 4 + 8
    parts = [ShardArrays(np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + 1000 * shard,
                         np.arange(rows, dtype=np.int64) + 1000 * shard, ("a", "b", "c"), ("a", "b", "c"))
             for shard, rows in enumerate((50, 2, 50))]  # fmt: skip
    held = _HeldOutSample(parts[0], budget=10 * 3 * row_bytes, shards=3, ledger=ledger)
    assert held.quota == 10 and ledger.held == 30 * row_bytes  # every shard's quota, held at once
    chosen = [np.array([7, 3, 40, 41, 42, 43, 44, 45, 46, 47, 48, 1]), np.array([1]), np.arange(49, 0, -4)]
    for part, rows in zip(parts, chosen):
        held.add(part, rows)
    features, labels = held.arrays()
    expected = np.concatenate([rows[:10] + 1000 * shard for shard, rows in enumerate(chosen)])
    assert labels.tolist() == expected.tolist() and len(labels) == 21  # the second shard had one held-out row
    assert np.array_equal(features, np.concatenate([part.features[rows[:10]] for part, rows in zip(parts, chosen)]))


def test_the_ledger_refuses_what_would_pass_the_budget_and_keeps_the_peak() -> None:
    ledger = BufferLedger(100)
    ledger.hold(60, "a")
    ledger.hold(40, "b")
    ledger.release(60)
    with pytest.raises(DataBudgetExceeded, match="c needs 61 bytes while the data path holds 40 of its 100-byte budget"):
        ledger.hold(61, "c")
    assert ledger.held == 40 and ledger.peak == 100


def _window_rows(lanes: Lanes, train_rows: list[int]) -> list[tuple[int, int]]:
    """(shard position, row) of each of a process's window rows: its shards' rows in window order."""
    return [(position, row) for position, rows in enumerate(train_rows) if lanes.reads(position) for row in range(rows)]


def test_one_lane_is_the_window_shuffled_as_a_whole_in_batches_of_the_batch_size() -> None:
    plans = window_batches(Lanes.of(1, 64), [160, 150, 0, 160], seed=7, epoch=2, window=3)
    order = torch.randperm(470, generator=_generator(7, 2, 3, "rows"))
    assert [len(indices) for indices, _ in plans] == [64] * 7 + [22]
    np.testing.assert_array_equal(np.concatenate([indices for indices, _ in plans]), order.numpy())
    assert [rows for _, rows in plans] == [len(indices) for indices, _ in plans]


def test_lanes_give_each_batch_fixed_sub_batches_until_they_run_out_and_every_row_once() -> None:
    train_rows = [100, 30, 50, 10, 40]  # lanes 0..2: positions (0, 3), (1, 4), (2,): 110, 70 and 50 rows
    lanes = Lanes.of(3, 10)
    assert [lanes.sub_batch(lane) for lane in range(3)] == [3, 3, 4]
    plans = window_batches(lanes, train_rows, seed=1, epoch=1, window=0)
    assert len(plans) == 37  # lane 0 needs ceil(110 / 3) batches, the longest
    rows = _window_rows(lanes, train_rows)
    lane_of_batch = [[rows[i][0] % 3 for i in indices.tolist()] for indices, _ in plans]
    # Lane order within each batch; lane 2 (50 rows, 4 a batch) runs out in batch 12, lane 1 (70, 3) in batch 23.
    assert lane_of_batch[0] == [0] * 3 + [1] * 3 + [2] * 4
    assert lane_of_batch[12] == [0] * 3 + [1] * 3 + [2] * 2 and lane_of_batch[13] == [0] * 3 + [1] * 3
    assert lane_of_batch[23] == [0] * 3 + [1] and lane_of_batch[24] == [0] * 3 and lane_of_batch[36] == [0] * 2
    every = np.concatenate([indices for indices, _ in plans])
    assert sorted(every.tolist()) == list(range(sum(train_rows)))
    assert [rows for _, rows in plans] == [len(indices) for indices, _ in plans]


def test_workers_reading_their_lanes_train_on_exactly_the_rows_of_one_process_batch_by_batch() -> None:
    train_rows = [100, 30, 50, 10, 40, 0, 70]
    alone = Lanes.of(4, 16)
    plans = window_batches(alone, train_rows, seed=5, epoch=3, window=1)
    rows = _window_rows(alone, train_rows)
    expected = [sorted(rows[i] for i in indices.tolist()) for indices, _ in plans]
    together: list[list[tuple[int, int]]] = [[] for _ in plans]
    for rank in range(2):
        worker = Lanes.of(4, 16, rank, 2)
        assert worker.owned == ((0, 2) if rank == 0 else (1, 3))
        worker_rows = _window_rows(worker, train_rows)
        assert {position % 4 for position, _ in worker_rows} <= set(worker.owned)
        worker_plans = window_batches(worker, train_rows, seed=5, epoch=3, window=1)
        assert [total for _, total in worker_plans] == [total for _, total in plans]
        for batch, (indices, _) in enumerate(worker_plans):
            together[batch] += [worker_rows[i] for i in indices.tolist()]
    assert [sorted(batch) for batch in together] == expected


def test_a_windows_steps_are_the_rows_its_plans_name_in_their_order() -> None:
    train_rows = [100, 30, 50, 10, 40]
    plans = window_batches(Lanes.of(3, 10), train_rows, seed=1, epoch=1, window=0)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(sum(train_rows), 2, 3)).astype(np.float32)
    labels = rng.integers(0, 5, sum(train_rows))
    steps = list(_steps(features, labels, plans))
    assert len(steps) == len(plans)
    for step, (indices, batch_rows) in zip(steps, plans):
        np.testing.assert_array_equal(step.features.numpy(), features[indices])
        np.testing.assert_array_equal(step.labels.numpy(), labels[indices])
        assert (step.rows, step.batch_rows) == (len(indices), batch_rows)


def test_lanes_that_workers_cannot_split_or_a_batch_cannot_hold_are_refused_naming_the_settings() -> None:
    with pytest.raises(LanesRefused, match="set SECURETRAIN_DATA_LANES to a multiple of SECURETRAIN_TRAINING_WORKERS"):
        Lanes.of(3, 64, 0, 2)
    with pytest.raises(LanesRefused, match="batch size 2 is smaller than the 4 lanes"):
        Lanes.of(4, 2)
