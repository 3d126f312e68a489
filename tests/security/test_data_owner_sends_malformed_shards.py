"""A data owner seals a shard that claims or decodes to more than the TEE may hold: the run fails closed, naming it.

What a data owner seals is authentic whatever it holds, so authentication cannot catch a shard built to take the
TEE's memory (which other jobs share) or to make it write past its arrays. A Parquet footer states the rows its
arrays are sized to: it can claim far more rows than memory holds, or fewer than its row groups hold. A column of
one repeated value decodes to thousands of times its plaintext, which is all the path chosen before any shard is
read (in memory, or streamed) knows of it. Played through run_training on the local stack's Azurite, in memory
and streamed, with the dataset of tests/streamed_shards.py, one of its shards replaced by the hostile one.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from securetrain.core.datasets import to_parquet
from securetrain.tee.training import run_training
from securetrain.tee.training.data import DataLimits, DatasetContentError, DatasetTooLarge, ShardTooLarge
from tests.integration import test_training_run
from tests.integration.test_training_run import RecordingProgress, upload_sealed
from tests.streamed_shards import FEATURES, LIMITS, as_table, sealed_shards, shard_rows, spec_for
from tests.unit.test_training_data import footer_rows_changed

pytestmark = pytest.mark.integration
# The fixtures of the training-path tests: the local stack's BlobStore, and a KEK made there as if released.
store, keys = test_training_run.store, test_training_run.keys

#: In memory: a cache that holds the shards' plaintext (~17 KB each at most) but not 20 MB of decoded rows.
IN_MEMORY = DataLimits(cache_bytes=4 << 20)
#: Streamed: the budget of tests/streamed_shards.py, doubled for the larger hostile shards.
STREAMED = dataclasses.replace(LIMITS, stream_budget_bytes=2 * LIMITS.stream_budget_bytes)
#: 500,000 rows of zeros: 16.7 KB of Parquet, 20 MB of arrays.
BOMB_ROWS = 500_000


def lying_footer(claimed: int) -> bytes:
    return footer_rows_changed(as_table(*shard_rows(5)), claimed)


def one_value_repeated() -> bytes:
    return to_parquet(as_table(np.zeros((BOMB_ROWS, FEATURES), np.float32), np.zeros(BOMB_ROWS, np.int64)))


@pytest.mark.parametrize(
    ("limits", "hostile", "refusal", "message"),
    [
        pytest.param(limits, lambda: lying_footer(1 << 40), ShardTooLarge,
                     r"shard datasets/{victim} decodes to 1099511627776 rows of 8 values",
                     id=f"footer-claims-more-rows-than-memory-{path}")  # fmt: skip
        for path, limits in (("in-memory", IN_MEMORY), ("streamed", STREAMED))
    ]
    + [
        pytest.param(limits, lambda: lying_footer(199), DatasetContentError,
                     r"shard datasets/{victim}: its row groups hold more rows than the 199 its footer says",
                     id=f"footer-claims-fewer-rows-than-it-holds-{path}")  # fmt: skip
        for path, limits in (("in-memory", IN_MEMORY), ("streamed", STREAMED))
    ]
    + [
        pytest.param(IN_MEMORY, one_value_repeated, DatasetTooLarge,
                     r"the dataset decodes to more than the TEE's 4194304-byte in-memory cache by shard "
                     r"datasets/{victim}", id="decodes-beyond-the-cache-in-memory"),  # fmt: skip
        pytest.param(STREAMED, one_value_repeated, ShardTooLarge,
                     rf"shard datasets/{{victim}} decodes to {BOMB_ROWS} rows of 8 values, \d+ bytes, more than the "
                     rf"{STREAMED.stream_budget_bytes} bytes", id="decodes-beyond-the-budget-streamed"),  # fmt: skip
    ],
)
def test_a_hostile_shard_fails_the_run_naming_it_before_it_takes_the_memory(
    store, keys, limits, hostile, refusal, message
) -> None:
    blobs = sealed_shards(store, keys, "parquet")
    victim = blobs[5]
    upload_sealed(store, keys, victim, hostile())
    spec = spec_for(blobs)
    progress = RecordingProgress()
    with pytest.raises(refusal, match="^" + message.format(victim=victim)):
        run_training(spec, keys, store, progress, threading.Event(), limits=limits)
    assert progress.calls == []  # nothing trained, nothing validated
    assert not list(store.list_blobs("models", spec.run_id))
