"""A dataset that run_training streams: twelve small sealed shards over limits too tiny to cache them.

The limits are tiny so that a few kilobytes of shards stream. The shards are sealed for the KEK of
tests/integration/test_training_run.py (made there as if released) and uploaded to the local stack's Azurite
through its ``store``; the streaming tests (tests/integration/test_streaming_run.py) and the attacks on a
streamed run (tests/security/test_storage_swaps_streamed_shards.py) train on them.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import safetensors.torch
import torch

from securetrain.core.contracts.training import JobKeys, TrainingSpec
from securetrain.core.datasets import to_parquet
from securetrain.core.storage import BlobStore
from securetrain.tee.training.data import DataLimits
from tests.arrow_streams import arrow_batches
from tests.integration.test_training_run import run_id, training_spec, upload_sealed

SHARDS, ROWS, FEATURES = 12, 200, 8
#: Streaming for sure (the dataset is tens of kilobytes), windows of 2 shards, a mid-epoch checkpoint per window.
LIMITS = DataLimits(cache_bytes=10_000, stream_budget_bytes=64 * 1024, shards_in_flight=2, window_shards=2,
                    checkpoint_windows=1)  # fmt: skip
HYPER = {"epochs": 2, "batch_size": 64, "learning_rate": 0.01}


def shard_rows(index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    features = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    labels = ((features[:, 0] + features[:, 1] > 0).astype(np.int64) + (features[:, 2] > 1)).astype(np.int64)
    return features, labels


def as_table(features: np.ndarray, labels: np.ndarray) -> pa.Table:
    return pa.table({**{f"f{j}": features[:, j] for j in range(FEATURES)}, "label": labels})


def encoded(fmt: str, features: np.ndarray, labels: np.ndarray) -> bytes:
    if fmt == "safetensors":
        return safetensors.torch.save({"x": torch.from_numpy(features), "label": torch.from_numpy(labels)})
    table = as_table(features, labels)
    if fmt == "parquet":
        return to_parquet(table)
    return arrow_batches(table.to_batches(max_chunksize=50))


def sealed_shards(store: BlobStore, keys: JobKeys, fmt: str) -> list[str]:
    prefix = f"stream-{fmt}-{uuid.uuid4().hex[:8]}"
    blobs = []
    for index in range(SHARDS):
        blob = f"{prefix}/part-{index:02d}.sealed"
        upload_sealed(store, keys, blob, encoded(fmt, *shard_rows(index)))
        blobs.append(blob)
    return blobs


def spec_for(blobs: list[str], fmt: str = "parquet", **changes: Any) -> TrainingSpec:
    return training_spec(run_id(), blobs, fmt, hyperparameters={**HYPER, **changes.pop("hyperparameters", {})},
                         **changes)  # fmt: skip
