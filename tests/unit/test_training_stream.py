"""The streaming path's pieces: seeded splits and orders, float64 standardization, the budget's ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securetrain.tee.training.loop import held_out_count
from securetrain.tee.training.stream import BufferLedger, DataBudgetExceeded, _Moments, shard_order, shard_split


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


def test_the_ledger_refuses_what_would_pass_the_budget_and_keeps_the_peak() -> None:
    ledger = BufferLedger(100)
    ledger.hold(60, "a")
    ledger.hold(40, "b")
    ledger.release(60)
    with pytest.raises(DataBudgetExceeded, match="c needs 61 bytes while the data path holds 40 of its 100-byte budget"):
        ledger.hold(61, "c")
    assert ledger.held == 40 and ledger.peak == 100
