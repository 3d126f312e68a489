"""Streaming training through the TEE path beside plain PyTorch streaming the same shards unsealed.

The data: ``--size-mib`` MiB of generated tabular data (benchmarks.trainer's rows: 64 float32 features and a
label) as ``--shards`` Parquet shards, at least 4x the data path's ``--budget-mib``. Each side runs in a process
of its own, so that peak RSS is its own, and both read from the same Azurite with the same prefetching
(``--in-flight`` shards downloaded and decoded in threads ahead of training), the same shuffle window
(``--window`` shards), the same model, seed, batch size and epochs:

- ``plain``: plain PyTorch over the plaintext Parquet shards: one pass for the standardization statistics and
  the held-out sample, then per epoch the shards in a seeded order, window by window, rows shuffled within a
  window. What streaming without securetrain would do;
- ``secure``: ``run_training`` on the same shards sealed, with ``DataLimits`` that stream (the in-memory cache
  below the dataset, the stream's budget ``--budget-mib``): download, authenticate and decrypt each shard
  every epoch, validate nothing (the plain side has no suite), seal a checkpoint after each epoch and the model.

Before it is measured, each side trains once, outside its clocks, on a small warm-up dataset staged beside the
measured one, as an agent that has run a job before has: the code a run uses is loaded then.

Figures: wall seconds, CPU seconds (all of the side's threads; less moved than wall time by other work on the
machine) and peak RSS of both, ``secure_plain_ratio`` (wall; goal <= 1.05) and ``secure_plain_cpu_ratio``, the
secure side's peak RSS above its RSS after the warm-up (the growth: what the job's data and training hold) against
the budget + the model's size (goal: within), each side's growth split into anonymous memory (what it holds) and
file-backed pages (code first used in the run), and its growth above the process before the warm-up (the code
first used included: what an agent's first job adds). Each side runs ``--repeats`` times, alternating which
runs first; its fastest run's times count, and the largest growth of any of its runs. Beside the fastest-against-
fastest ratio: each repeat's own wall ratio (``secure_plain_pair_ratios``; a repeat's two runs ran back to back)
and their median. The last line is one JSON object.

Usage: ``python -m benchmarks.streaming [--size-mib 1024] [--budget-mib 256] [--shards 64] [--epochs 1]
[--repeats 2]``
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.stack import private_pem, released_keys, running_stack
from benchmarks.trainer import (
    BATCH_SIZE, CONTEXT, FEATURES, KEK_ID, LEARNING_RATE, MIB, MODEL, PLAINTEXT_CONTAINER, ROW_BYTES, SEED,
    SHARD_NAME, azurite_store, best_run, job_spec, paired_ratios, peak_rss_mib, side_runs, stage_shards,
)  # fmt: skip
from securetrain.core.sealed import KekPrivateKey
from securetrain.localstack.services.azurite import AZURITE

if TYPE_CHECKING:
    from collections.abc import Callable

    from securetrain.core.storage import BlobStore
    from securetrain.tee.training.data import DataLimits


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / MIB


def rss_split_mib() -> tuple[float, float]:
    """The process's (anonymous, file-backed) resident memory: its heap and buffers apart from its code's pages."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) / 1024  # kB
    return fields["RssAnon"], fields["RssFile"]


class RssSplitPeaks(threading.Thread):
    """The peaks of :func:`rss_split_mib` above their values at the start, sampled every 20 ms (the kernel keeps a
    high-water mark of the whole RSS only): how much of a side's growth is memory it holds and how much the pages
    of code it used."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._initial = rss_split_mib()
        self.anon = self.file = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self._sample()

    def _sample(self) -> None:
        anon, file = rss_split_mib()
        self.anon, self.file = max(self.anon, anon - self._initial[0]), max(self.file, file - self._initial[1])

    def growth(self) -> dict[str, float]:
        self._done.set()
        self.join()
        self._sample()
        return {"anon_growth_mib": self.anon, "file_growth_mib": self.file}


def loaded_code_rss_mib() -> float:
    """The side's RSS before its warm-up, the cold growth's baseline, with PyTorch's compiler stack loaded: its
    deterministic mode imports that on first use (about a second and 70 MiB here), code that is neither the data
    path's nor the model's, kept out of the cold growth as the measurements before the warm-up kept it out."""
    import torch  # noqa: PLC0415 - only the child processes train

    torch.use_deterministic_algorithms(True)
    return current_rss_mib()


#: The small dataset each side trains on once before it is measured (2 shards of 4096 rows, 2 MiB): the code its
#: run uses (the Parquet decoder, AES-GCM, the training kernels, the seals) loaded, as in an agent that has run a
#: job before, so that the measured growth is what a job's data and training hold (docs/trainer.md).
WARM_UP_NAME, WARM_UP_SHARDS, WARM_UP_ROWS = "bench/warm-up", 2, 4096


def release_kept_memory() -> None:
    """What the warm-up freed given back to the system (glibc's ``malloc_trim``, Arrow's pool), so that the
    measured run grows by every page its data needs rather than reusing the warm-up's: its own 3-10 MiB of
    freed heap, which an agent's next job would reuse, is not taken off the growth."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    pa.default_memory_pool().release_unused()


def train_plain(store: BlobStore, name: str, shards: int, epochs: int, window: int, in_flight: int,
                budget: int) -> float:  # fmt: skip
    """Plain PyTorch streaming the plaintext Parquet shards ``{name}-{index}``; the held-out accuracy."""
    import torch  # noqa: PLC0415 - only the child processes train

    from securetrain.tee.training.data import read_ahead  # noqa: PLC0415 - the same thread pool read-ahead
    from securetrain.tee.training.models import DataShape, build_model  # noqa: PLC0415
    from securetrain.tee.training.stream import HELD_OUT_SHARE, shard_order, shard_split  # noqa: PLC0415

    torch.use_deterministic_algorithms(True)  # inside the timing, as run_training's own call is

    def read(index: int) -> tuple[np.ndarray, np.ndarray]:
        data = b"".join(store.download_chunks(PLAINTEXT_CONTAINER, f"{name}-{index}.parquet"))
        table = pq.read_table(pa.BufferReader(data))
        features = np.stack([column.to_numpy() for column in table.drop(["label"]).columns], axis=1)
        return features.astype(np.float32), table.column("label").to_numpy().astype(np.int64)

    quota = max(1, budget // HELD_OUT_SHARE // ROW_BYTES // shards)
    total, sums, squares, held_x, held_y = 0, np.zeros(FEATURES), np.zeros(FEATURES), [], []
    for index, (x, y) in read_ahead(range(shards), read, in_flight):
        training, held = shard_split(len(y), SEED, index)
        rows = x[training.numpy()].astype(np.float64)
        total, sums, squares = total + len(rows), sums + rows.sum(0), squares + (rows**2).sum(0)
        held_x.append(x[held[:quota].numpy()])
        held_y.append(y[held[:quota].numpy()])
    mean = sums / total
    std = np.sqrt(np.maximum(squares / total - mean**2, 0))
    val_x, val_y = torch.from_numpy(np.concatenate(held_x)), torch.from_numpy(np.concatenate(held_y))
    torch.manual_seed(SEED)
    model = build_model(MODEL["name"], MODEL["params"], DataShape((FEATURES,), 2))
    model.standardize.fit(torch.from_numpy(mean).float(), torch.from_numpy(std).float())
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    for epoch in range(1, epochs + 1):
        model.train()
        order = shard_order(shards, SEED, epoch)
        reading = read_ahead(order, read, in_flight)
        for first in range(0, shards, window):
            parts = []
            for _ in order[first : first + window]:
                index, (x, y) = next(reading)
                training = shard_split(len(y), SEED, index)[0].numpy()
                parts.append((x[training], y[training]))
            features = torch.from_numpy(np.concatenate([p[0] for p in parts]))
            labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
            del parts
            for batch in torch.randperm(len(labels)).split(BATCH_SIZE):
                loss = torch.nn.functional.cross_entropy(model(features[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            del features, labels
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(val_x[b]).argmax(1) == val_y[b]).sum())
                          for b in torch.arange(len(val_y)).split(4096))  # fmt: skip
        accuracy = correct / len(val_y)
    return accuracy


def measured_after_warm_up(stack_env: Path, warm_up: Callable[[BlobStore], object],
                           train: Callable[[BlobStore], float]) -> dict[str, Any]:  # fmt: skip
    """One side's run: ``warm_up`` outside the clocks, what it freed given back, then ``train`` (its held-out
    accuracy) timed and its RSS sampled above the baseline taken between the two; both read through one store."""
    cold = loaded_code_rss_mib()
    with azurite_store(stack_env) as store:
        warm_up(store)
        release_kept_memory()
        baseline = current_rss_mib()
        peaks = RssSplitPeaks()
        peaks.start()
        start, cpu = time.perf_counter(), time.process_time()
        accuracy = train(store)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "val_accuracy": accuracy, "peak_rss_mib": peak_rss_mib(),
            "baseline_rss_mib": baseline, "cold_rss_mib": cold, **peaks.growth()}  # fmt: skip


def run_plain(stack_env: Path, shards: int, epochs: int, window: int, in_flight: int, budget: int) -> dict[str, Any]:
    """Plain PyTorch streaming the plaintext Parquet shards from Azurite, after its warm-up."""
    return measured_after_warm_up(
        stack_env,
        lambda store: train_plain(store, WARM_UP_NAME, WARM_UP_SHARDS, 1, window, in_flight, budget),
        lambda store: train_plain(store, SHARD_NAME, shards, epochs, window, in_flight, budget),
    )


def streaming_limits(window: int, in_flight: int, budget: int) -> DataLimits:
    """The secure side's data path: streamed (the in-memory cache below the dataset), no mid-epoch checkpoints."""
    from securetrain.tee.training.data import DataLimits  # noqa: PLC0415 - the plain side must not load it

    return DataLimits(cache_bytes=budget, stream_budget_bytes=budget, shards_in_flight=in_flight, window_shards=window,
                      checkpoint_windows=0)  # fmt: skip


def run_secure(stack_env: Path, spec_json: dict[str, Any], shards: int, window: int, in_flight: int,
               budget: int) -> dict[str, Any]:  # fmt: skip
    """``run_training`` streaming the sealed shards after its warm-up; the KEK's private key arrives on stdin."""
    from securetrain.core.contracts.job_spec import JobSpec  # noqa: PLC0415
    from securetrain.core.contracts.training import DatasetShard, JobKeys, NullProgress, TrainingSpec  # noqa: PLC0415
    from securetrain.tee.training import run_training  # noqa: PLC0415

    keys = JobKeys.from_released(KekPrivateKey.from_pem(sys.stdin.buffer.read()), KEK_ID)

    def spec(job: dict[str, Any], name: str, count: int) -> TrainingSpec:
        return TrainingSpec.for_job(JobSpec.from_json(job), [
            DatasetShard(container="datasets", blob=f"{name}-{i}.sealed", format="parquet", context=CONTEXT)
            for i in range(count)
        ])  # fmt: skip

    def train(store: BlobStore, job: dict[str, Any], name: str, count: int, limits: DataLimits) -> float:
        result = run_training(spec(job, name, count), keys, store, NullProgress(), threading.Event(), limits=limits)
        return result.metrics["val_accuracy"]

    limits = streaming_limits(window, in_flight, budget)
    warm_up_job = job_spec(f"{spec_json['run_id']}-warm-up", 1)
    return measured_after_warm_up(
        stack_env,
        # Streamed too, below a cache smaller than it: the warm-up runs the code the measured run does.
        lambda store: train(store, warm_up_job, WARM_UP_NAME, WARM_UP_SHARDS, replace(limits, cache_bytes=0)),
        lambda store: train(store, spec_json, SHARD_NAME, shards, limits),
    )


def model_mib() -> float:
    from securetrain.tee.training.models import DataShape, build_model  # noqa: PLC0415

    model = build_model(MODEL["name"], MODEL["params"], DataShape((FEATURES,), 2))
    # Weights, Adam's two moments and the gradients: four copies of the parameters.
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters()) / MIB


def _combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A side's runs as one: the fastest run's times and accuracy, the largest growth of each kind any run had."""
    growths = [{**run, "rss_growth_mib": run["peak_rss_mib"] - run["baseline_rss_mib"],
                "cold_rss_growth_mib": run["peak_rss_mib"] - run["cold_rss_mib"]} for run in runs]  # fmt: skip
    kinds = ("rss_growth_mib", "cold_rss_growth_mib", "anon_growth_mib", "file_growth_mib")
    return {**best_run(growths), **{kind: max(run[kind] for run in growths) for kind in kinds}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="generated tabular data, at least this much")
    parser.add_argument("--budget-mib", type=int, default=256, help="the streaming data path's memory budget")
    parser.add_argument("--shards", type=int, default=64, help="number of Parquet shards")
    parser.add_argument("--window", type=int, default=4, help="shards shuffled together")
    parser.add_argument("--in-flight", type=int, default=2, help="shards read ahead")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each side, alternating which runs first; the fastest counts, and the largest "
                        "memory growth")  # fmt: skip
    parser.add_argument("--role", choices=["plain", "secure"], help=argparse.SUPPRESS)
    parser.add_argument("--stack-env", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    budget = args.budget_mib * MIB
    shape = (args.window, args.in_flight, budget)
    if args.role == "plain":
        print(json.dumps(run_plain(args.stack_env, args.shards, args.epochs, *shape)))
        return 0
    if args.role == "secure":
        print(json.dumps(run_secure(args.stack_env, json.loads(args.spec), args.shards, *shape)))
        return 0
    if args.size_mib < 4 * args.budget_mib:
        parser.error("--size-mib must be at least 4x --budget-mib: the dataset must not fit the data path")
    rows = math.ceil(args.size_mib * MIB / ROW_BYTES / args.shards)
    from securetrain.tee.training.stream import DataBudgetExceeded, refuse_beyond_budget  # noqa: PLC0415

    try:  # before anything is staged or run, as the secure side would refuse it (a shard's plaintext ~ its rows)
        refuse_beyond_budget(streaming_limits(args.window, args.in_flight, budget), rows * ROW_BYTES, args.window)
    except DataBudgetExceeded as exc:
        parser.error(f"{exc} (here: a larger --budget-mib, a smaller --window or --in-flight, or more --shards)")

    keys = released_keys()
    keys_pem, public = private_pem(keys.kek_private), keys.kek_public
    with running_stack((AZURITE,)) as (config, _):
        sealed_bytes = stage_shards(config.layout.env_file, public, args.shards, rows)
        stage_shards(config.layout.env_file, public, WARM_UP_SHARDS, WARM_UP_ROWS, WARM_UP_NAME)
        common = ["--size-mib", str(args.size_mib), "--budget-mib", str(args.budget_mib), "--shards",
                  str(args.shards), "--window", str(args.window), "--in-flight", str(args.in_flight),
                  "--epochs", str(args.epochs), "--stack-env", str(config.layout.env_file)]  # fmt: skip
        # Each secure run a run of its own: nothing to resume.
        runs = side_runs("benchmarks.streaming", args.repeats, common,
                         lambda repeat: job_spec(f"bench-stream-{repeat}", args.epochs), keys_pem)  # fmt: skip
    plain, secure = (_combined(runs[side]) for side in ("plain", "secure"))
    ratio = secure["seconds"] / plain["seconds"]
    # The CPU time of all of a side's threads: less moved than wall time by other work on the machine.
    cpu_ratio = secure["cpu_seconds"] / plain["cpu_seconds"]
    growth = secure["rss_growth_mib"]
    bound = args.budget_mib + model_mib()
    print(f"data: {args.shards} Parquet shards, {rows * args.shards} rows, {sealed_bytes / MIB:.0f} MiB sealed; budget "
          f"{args.budget_mib} MiB, windows of {args.window} shards, {args.in_flight} in flight; {args.epochs} epochs "
          f"of {MODEL}")  # fmt: skip
    for name, side in (("plain PyTorch streaming (plaintext)", plain), ("run_training streaming (sealed)   ", secure)):
        print(f"{name}: {side['seconds']:.1f} s ({side['cpu_seconds']:.1f} s of CPU), peak RSS "
              f"{side['peak_rss_mib']:.0f} MiB (before data "
              f"{side['baseline_rss_mib']:.0f} MiB; growth: {side['anon_growth_mib']:.0f} MiB anonymous, "
              f"{side['file_growth_mib']:.0f} MiB file-backed), val_accuracy {side['val_accuracy']:.4f}")  # fmt: skip
    print(f"secure/plain wall-time ratio: {ratio:.3f} (goal <= 1.05); CPU-time ratio {cpu_ratio:.3f}")
    paired = paired_ratios(runs)
    print(f"secure data-path growth: {growth:.0f} MiB of RSS vs budget + model {bound:.1f} MiB (goal: within); "
          f"{secure['cold_rss_growth_mib']:.0f} MiB above the process before its warm-up, the code first used "
          f"included (plain: {plain['rss_growth_mib']:.0f} and {plain['cold_rss_growth_mib']:.0f} MiB)")  # fmt: skip
    print(json.dumps({
        "benchmark": "streaming", "sealed_mib": round(sealed_bytes / MIB, 1), "budget_mib": args.budget_mib,
        "shards": args.shards, "window": args.window, "in_flight": args.in_flight, "epochs": args.epochs,
        "repeats": args.repeats,
        "plain_seconds": round(plain["seconds"], 2), "secure_seconds": round(secure["seconds"], 2),
        "secure_plain_ratio": round(ratio, 3), **paired, "plain_cpu_seconds": round(plain["cpu_seconds"], 2),
        "secure_cpu_seconds": round(secure["cpu_seconds"], 2), "secure_plain_cpu_ratio": round(cpu_ratio, 3),
        "plain_peak_rss_mib": round(plain["peak_rss_mib"]),
        "secure_peak_rss_mib": round(secure["peak_rss_mib"]), "secure_rss_growth_mib": round(growth),
        "secure_cold_rss_growth_mib": round(secure["cold_rss_growth_mib"]),
        "plain_rss_growth_mib": round(plain["rss_growth_mib"]),
        "plain_cold_rss_growth_mib": round(plain["cold_rss_growth_mib"]),
        "plain_anon_growth_mib": round(plain["anon_growth_mib"]), "plain_file_growth_mib": round(plain["file_growth_mib"]),
        "secure_anon_growth_mib": round(secure["anon_growth_mib"]),
        "secure_file_growth_mib": round(secure["file_growth_mib"]),
        "budget_plus_model_mib": round(bound, 1), "within_budget": growth <= bound,
        "plain_val_accuracy": plain["val_accuracy"], "secure_val_accuracy": secure["val_accuracy"],
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
