"""A data owner seals a Parquet shard whose footer lies about its rows: the run fails closed, naming the shard.

The footer is the data owner's to write, and it sizes the arrays a shard decodes into. In a pooled dataset one
owner's shard could claim far more rows than it holds (an allocation to exhaust the TEE's memory, which other jobs
share) or fewer (a write past the arrays). Authentication cannot catch either: the shard is sealed by its owner.
Played through run_training on the local stack's Azurite, in memory and streamed, with the dataset of
tests/streamed_shards.py and the footer rewritten as tests/unit/test_training_data.py does.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest

from securetrain.tee.training import run_training
from securetrain.tee.training.data import DataLimits, DatasetContentError, ShardTooLarge
from tests.integration import test_training_run
from tests.integration.test_training_run import RecordingProgress, upload_sealed
from tests.streamed_shards import LIMITS, as_table, sealed_shards, shard_rows, spec_for
from tests.unit.test_training_data import footer_rows_changed

pytestmark = pytest.mark.integration
# The fixtures of the training-path tests: the local stack's BlobStore, and a KEK made there as if released.
store, keys = test_training_run.store, test_training_run.keys

# The rewritten shard is of two row groups, larger than the others: the streamed budget makes room for it.
PATHS = [pytest.param(DataLimits(), id="in-memory"),
         pytest.param(dataclasses.replace(LIMITS, stream_budget_bytes=2 * LIMITS.stream_budget_bytes), id="streamed")]


@pytest.mark.parametrize("limits", PATHS)
@pytest.mark.parametrize(
    ("claimed", "refusal", "message"),
    [
        pytest.param(1 << 40, ShardTooLarge, r" decodes to 1099511627776 rows of 8 values", id="more-rows-than-memory"),
        pytest.param(199, DatasetContentError, r": its row groups hold more rows than the 199 its footer says",
                     id="fewer-rows-than-it-holds"),  # fmt: skip
    ],
)
def test_a_footer_that_lies_about_its_rows_fails_the_run_naming_the_shard(
    store, keys, limits, claimed, refusal, message
) -> None:
    blobs = sealed_shards(store, keys, "parquet")
    victim = blobs[5]
    upload_sealed(store, keys, victim, footer_rows_changed(as_table(*shard_rows(5)), claimed))
    spec = spec_for(blobs)
    progress = RecordingProgress()
    with pytest.raises(refusal, match=rf"^shard datasets/{victim}{message}"):
        run_training(spec, keys, store, progress, threading.Event(), limits=limits)
    assert progress.calls == []  # nothing trained, not even validated as a whole
    assert not list(store.list_blobs("models", spec.run_id))
