"""Storage changes a streamed dataset while a run trains on it: the run stops naming the shard, and seals nothing.

A streamed run reads every shard again each epoch, after the survey that validated them, so storage gets another
chance at each read: it flips a bit of a shard (authentication of its segments fails) or puts in its place another
file sealed for the same key under the same context (authentic, but not the file this run surveyed). Played through
run_training on the local stack's Azurite with the dataset of tests/streamed_shards.py; storage acts right after
the survey.
"""

from __future__ import annotations

import io
import threading

import pytest

from securetrain.core.sealed import seal
from securetrain.core.sealed.errors import SegmentTampered
from securetrain.tee.training import run_training
from securetrain.tee.training.data import ShardChanged
from tests.integration import test_training_run
from tests.integration.test_training_run import CONTEXT, RecordingProgress
from tests.streamed_shards import LIMITS, encoded, sealed_shards, shard_rows, spec_for

pytestmark = pytest.mark.integration
# The fixtures of the training-path tests: the local stack's BlobStore, and a KEK made there as if released.
store, keys = test_training_run.store, test_training_run.keys


# Parquet and safetensors shards are decrypted whole into one buffer, Arrow streams segment by segment.
@pytest.mark.parametrize("fmt", ["parquet", "safetensors", "arrow"])
def test_a_shard_tampered_mid_stream_stops_training_naming_the_shard(store, keys, fmt: str) -> None:
    blobs = sealed_shards(store, keys, fmt)
    victim = blobs[5]
    tampered = bytearray(b"".join(store.download_chunks("datasets", victim)))  # the same file, one bit flipped
    tampered[-20] ^= 0x01

    class TamperAfterSurvey(RecordingProgress):
        def validation_done(self, aggregates) -> None:
            super().validation_done(aggregates)
            store.upload_stream("datasets", victim, io.BytesIO(bytes(tampered)), overwrite=True)

    spec = spec_for(blobs, fmt)
    progress = TamperAfterSurvey()
    with pytest.raises(SegmentTampered, match=rf"^shard datasets/{victim}: segment \d+ failed authentication"):
        run_training(spec, keys, store, progress, threading.Event(), limits=LIMITS)
    assert [kind for kind, _ in progress.calls] == ["validation_done"]
    assert not list(store.list_blobs("models", spec.run_id))


def test_a_shard_swapped_for_another_file_sealed_for_the_same_key_is_refused_naming_it(store, keys) -> None:
    blobs = sealed_shards(store, keys, "parquet")
    victim = blobs[7]
    other = io.BytesIO()  # authentic: sealed for the job's KEK under the manifest's context, other rows
    seal(io.BytesIO(encoded("parquet", *shard_rows(99))), other, keys.kek_public, CONTEXT, segment_size=4096)

    class SwapAfterSurvey(RecordingProgress):
        def validation_done(self, aggregates) -> None:
            super().validation_done(aggregates)
            store.upload_stream("datasets", victim, io.BytesIO(other.getvalue()), overwrite=True)

    spec = spec_for(blobs)
    with pytest.raises(ShardChanged, match=rf"^shard datasets/{victim} is not the sealed file this run read before"):
        run_training(spec, keys, store, SwapAfterSurvey(), threading.Event(), limits=LIMITS)
    assert not list(store.list_blobs("models", spec.run_id))
