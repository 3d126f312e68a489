"""One training job in 1 worker beside 2 data-parallel workers: wall time, speed-up, equal results.

The same sealed Parquet shards in the local stack's Azurite, the same model, seed and epochs, run through
``run_training`` twice in this run: with ``SECURETRAIN_TRAINING_WORKERS=1`` (training in this process with
``--threads`` PyTorch threads, by default every core: its best on this machine) and with 2 workers (each
``--threads / 2`` threads, so the two use the same cores). The model is large enough beside the data (an
MLP of ~0.6 M parameters on 64 features, batches of 1024) that computing gradients dominates averaging them.
The stack runs its identity service: workers sign in to storage as the TEE does.

Figures: ``speedup`` (1-worker wall / 2-worker wall; goal >= 1.6 on 2 cores), both walls, ``epoch_speedup``
(the same for the seconds per epoch after the first: the pace once the workers have started and read the
data), and the largest difference between the two models' weights (``max_abs_weight_diff``; the tolerance is
in docs/trainer.md).

With ``--stream`` both runs stream the shards every epoch (an in-memory cache of one byte) in 2 lanes, so that
each of the 2 workers decrypts and decodes only its own lane's shards in each epoch (docs/trainer.md, "The data
path"); the single process, reading both lanes, trains on the same batches.

Usage: ``python -m benchmarks.distributed [--rows 40000] [--shards 4] [--epochs 6] [--threads N] [--stream]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import safetensors.torch
import torch

from benchmarks.stack import KEK_ID, released_keys, running_stack
from securetrain.core.contracts.job_spec import JobSpec
from securetrain.core.contracts.training import DatasetShard, JobKeys, TrainingSpec
from securetrain.core.process_logging import configure_logging
from securetrain.core.sealed import SealedReader, seal
from securetrain.core.storage import BlobStore
from securetrain.localstack.emulated_platform import EmulatedPlatform
from securetrain.localstack.registry import services_for
from securetrain.localstack.settings import tee_environment
from securetrain.tee.settings import TeeSettings
from securetrain.tee.training import run_training

FEATURES = 64
SEED = 7
CONTEXT = {"dataset_id": "bench-distributed"}
MODEL = {"name": "mlp", "params": {"hidden": [1024, 512]}}
HYPER = {"batch_size": 1024, "learning_rate": 0.001, "seed": SEED}


class _EpochClock:
    """The progress sink: when each epoch ended (the group's steady pace, apart from its start-up)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def validation_done(self, aggregates: Mapping[str, Any]) -> None:
        pass

    def epoch_done(self, epoch: int, step: int, metrics: Mapping[str, float], checkpoint_blob: str) -> None:
        self.ends.append(time.perf_counter())

    def sealing_model(self) -> None:
        pass


def shard_parquet(index: int, rows: int) -> bytes:
    rng = np.random.default_rng(SEED * 1000 + index)
    features = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    label = (features[:, :8].sum(axis=1) + 0.5 * rng.standard_normal(rows, dtype=np.float32) > 0).astype(np.int64)
    sink = io.BytesIO()
    pq.write_table(pa.table({**{f"f{j:02d}": features[:, j] for j in range(FEATURES)}, "label": label}), sink)
    return sink.getvalue()


def job(blobs: list[str], epochs: int) -> TrainingSpec:
    run = f"bench-{uuid.uuid4().hex[:8]}"
    document = {
        "run_id": run, "nonce": "n" * 32, "kek_id": KEK_ID,
        "datasets": [{"container": "datasets", "manifest": f"{run}/manifest.json"}],
        "columns": {"label": "label"}, "model": MODEL, "hyperparameters": {**HYPER, "epochs": epochs},
        "checkpoints": {"container": "checkpoints", "prefix": f"{run}/"},
        "output": {"container": "models", "blob": f"{run}/model.sealed"},
    }  # fmt: skip
    shards = [DatasetShard(container="datasets", blob=blob, format="parquet", context=CONTEXT) for blob in blobs]
    return TrainingSpec.for_job(JobSpec.from_json(document), shards)


def weights(store: BlobStore, keys: JobKeys, spec: TrainingSpec) -> dict[str, torch.Tensor]:
    with store.open_read(spec.output.container, spec.output.blob) as src:
        reader = SealedReader(src, keys.kek_private, expected_context={"run_id": spec.run_id, "kind": "model"})
        return safetensors.torch.load(bytes(reader.read_plaintext()))


def timed(spec: TrainingSpec, keys: JobKeys, store: BlobStore, workers: int, threads: int) -> dict[str, Any]:
    """Wall seconds, seconds per epoch after the first (start-up excluded) and the metrics of one run."""
    os.environ["SECURETRAIN_TRAINING_WORKERS"] = str(workers)
    os.environ["SECURETRAIN_TRAINING_WORKER_THREADS"] = str(max(1, threads // workers))
    torch.set_num_threads(threads)
    clock = _EpochClock()
    start = time.perf_counter()
    result = run_training(spec, keys, store, clock, threading.Event())
    wall = time.perf_counter() - start
    epoch_s = (clock.ends[-1] - clock.ends[0]) / (len(clock.ends) - 1)
    return {"wall_s": round(wall, 3), "epoch_s": round(epoch_s, 3), "metrics": result.metrics}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stream", action="store_true", help="stream the shards every epoch, in 2 lanes")
    args = parser.parse_args()
    if args.stream:
        os.environ.update(SECURETRAIN_DATA_CACHE_BYTES="1", SECURETRAIN_DATA_LANES="2")
    # The launcher's and the workers' timings (start, each epoch) show where the wall time goes.
    configure_logging("%(asctime)s %(name)s %(message)s", force=True)
    keys = released_keys(2048)
    with running_stack(services_for(EmulatedPlatform.SNP), EmulatedPlatform.SNP) as (config, env):
        os.environ.update(tee_environment(env, config.layout))
        with TeeSettings.load().blob_store() as store:
            for container in ("datasets", "checkpoints", "models"):
                store.ensure_container(container)
            blobs = []
            for index in range(args.shards):
                sealed = io.BytesIO()
                seal(io.BytesIO(shard_parquet(index, args.rows // args.shards)), sealed, keys.kek_public, CONTEXT)
                blobs.append(f"bench-ddp/part-{index}.parquet.sealed")
                store.upload_stream("datasets", blobs[-1], io.BytesIO(sealed.getvalue()), overwrite=True)
            alone, together = job(blobs, args.epochs), job(blobs, args.epochs)
            one = timed(alone, keys, store, 1, args.threads)
            print(f"1 worker, {args.threads} threads: {one}", flush=True)
            two = timed(together, keys, store, 2, args.threads)
            print(f"2 workers, {max(1, args.threads // 2)} threads each: {two}", flush=True)
            expected, actual = weights(store, keys, alone), weights(store, keys, together)
            diff = max(float((expected[name] - actual[name]).abs().max()) for name in expected)
    print(json.dumps({
        "benchmark": "distributed", "streamed": args.stream, "rows": args.rows, "shards": args.shards, "epochs": args.epochs,
        "threads": args.threads, "one_worker_s": one["wall_s"], "two_workers_s": two["wall_s"],
        "speedup": round(one["wall_s"] / two["wall_s"], 3), "goal_speedup": 1.6,
        "one_worker_epoch_s": one["epoch_s"], "two_workers_epoch_s": two["epoch_s"],
        "epoch_speedup": round(one["epoch_s"] / two["epoch_s"], 3), "max_abs_weight_diff": diff,
        "val_accuracy": [one["metrics"].get("val_accuracy"), two["metrics"].get("val_accuracy")],
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
