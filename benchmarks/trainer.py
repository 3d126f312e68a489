"""Training through the TEE path beside plain PyTorch: wall time and peak memory, same model, data and epochs.

The data: at least ``--size-mib`` MiB of generated tabular data (64 float32 features and an integer
label per row, a label a small MLP can learn), as ``--shards`` Parquet shards. Each side runs in a
process of its own, so that peak RSS is its own:

- ``plain``: the same Parquet shards, unsealed, downloaded from the same Azurite into memory, read into
  tensors and trained by a plain PyTorch loop (same model class, optimizer, batch size, shuffling and
  per-epoch held-out evaluation as the trainer): what training without securetrain would do. Both
  sides read from storage, so the ratio is the cost of securetrain (sealing, authentication, sealed
  checkpoints), not of where the data lives;
- ``secure``: ``run_training`` from the shards sealed in Azurite (a local stack in a temporary state
  directory, Azurite only): download, authenticate and decrypt in memory, train, seal a checkpoint
  after every epoch, seal the model.

The KEK is generated in memory here (key release is measured with the agent, not here); the secure
process gets its private key on stdin, never from a file. No expectation suite runs: the plain side
has no validation step to match it.

Figures: ``secure_plain_ratio`` (target <= 1.05), wall seconds and peak RSS of both, sealed bytes.
Each side runs ``--repeats`` times, alternating which runs first, and its fastest run counts (the machine may be
shared); beside it each repeat's own ratio (``secure_plain_pair_ratios``: a repeat's two runs ran back to back)
and their median.

Usage: ``python -m benchmarks.trainer [--size-mib 256] [--shards 4] [--epochs 5] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from azure.core.credentials import AzureNamedKeyCredential

from benchmarks.stack import KEK_ID, private_pem, released_keys, running_stack
from securetrain.core.sealed import KekPrivateKey, KekPublicKey, seal
from securetrain.localstack import read_stack_env
from securetrain.localstack.services.azurite import AZURITE
from securetrain.core.storage import BlobStore
from securetrain.tee.allocator import TEE_ALLOCATOR_ENVIRONMENT

MIB = 1 << 20
FEATURES = 64
ROW_BYTES = 4 * FEATURES + 8
SEED = 5
MODEL = {"name": "mlp", "params": {"hidden": [128, 64]}}
BATCH_SIZE = 1024
LEARNING_RATE = 0.001
CONTEXT = {"dataset_id": "bench-tabular"}
PLAINTEXT_CONTAINER = "plaintext"
#: The measured shards' names: ``{SHARD_NAME}-{index}.parquet`` and ``.sealed``.
SHARD_NAME = "bench/part"


def shard_parquet(index: int, rows: int) -> bytes:
    """Shard ``index`` of the generated data as Parquet (deterministic: both processes make the same bytes)."""
    rng = np.random.default_rng(SEED * 1000 + index)
    features = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    label = (features[:, :8].sum(axis=1) + 0.5 * rng.standard_normal(rows, dtype=np.float32) > 0).astype(np.int64)
    table = pa.table({**{f"f{j:02d}": features[:, j] for j in range(FEATURES)}, "label": label})
    sink = io.BytesIO()
    # Random floats neither compress nor dictionary-encode: plain pages keep the size what it says.
    pq.write_table(table, sink, use_dictionary=False, compression="none")
    return sink.getvalue()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def azurite_store(stack_env: Path) -> BlobStore:
    """The benchmark's Azurite (its stack runs no identity service), with the account key the stack exports."""
    env = read_stack_env(stack_env)
    key = AzureNamedKeyCredential(env["SECURETRAIN_BLOB_ACCOUNT_NAME"], env["SECURETRAIN_BLOB_ACCOUNT_KEY"])
    return BlobStore(env["SECURETRAIN_BLOB_ENDPOINT"], key, ca_bundle=Path(env["SECURETRAIN_CA_BUNDLE"]))


def run_plain(stack_env: Path, shards: int, epochs: int) -> dict[str, Any]:
    """Plain PyTorch from the plaintext Parquet shards in Azurite."""
    import torch  # noqa: PLC0415 - only the child processes train

    from securetrain.tee.training.loop import VALIDATION_FRACTION, epoch_order  # noqa: PLC0415
    from securetrain.tee.training.models import DataShape, build_model  # noqa: PLC0415

    start = time.perf_counter()
    with azurite_store(stack_env) as store:
        plaintext = [b"".join(store.download_chunks(PLAINTEXT_CONTAINER, f"{SHARD_NAME}-{i}.parquet"))
                     for i in range(shards)]  # fmt: skip
    tables = [pq.read_table(pa.BufferReader(data)) for data in plaintext]
    del plaintext
    features = torch.from_numpy(np.concatenate(
        [np.stack([column.to_numpy() for column in t.drop(["label"]).columns], axis=1) for t in tables]))  # fmt: skip
    labels = torch.from_numpy(np.concatenate([t.column("label").to_numpy() for t in tables]))
    del tables
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    held_out = round(len(labels) * VALIDATION_FRACTION)
    val_rows, train_rows = order[:held_out], order[held_out:]
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    model = build_model(MODEL["name"], MODEL["params"], DataShape((FEATURES,), 2))
    model.standardize.fit(features[train_rows].mean(0), features[train_rows].std(0, correction=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in train_rows[epoch_order(len(train_rows), SEED, epoch)].split(BATCH_SIZE):
            loss = torch.nn.functional.cross_entropy(model(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(features[b]).argmax(1) == labels[b]).sum()) for b in val_rows.split(4096))
        accuracy = correct / len(val_rows)
    return {"seconds": time.perf_counter() - start, "val_accuracy": accuracy, "peak_rss_mib": peak_rss_mib()}


def stage_shards(stack_env: Path, public: KekPublicKey, shards: int, rows: int, name: str = SHARD_NAME) -> int:
    """Upload ``shards`` generated Parquet shards of ``rows`` rows to Azurite twice, as plaintext
    ``{name}-{index}.parquet`` (the plain side's) and sealed for ``public`` as ``{name}-{index}.sealed`` (the
    secure side's); the sealed bytes in all."""
    sealed_bytes = 0
    with azurite_store(stack_env) as store:
        for container in ("datasets", "checkpoints", "models", PLAINTEXT_CONTAINER):
            store.ensure_container(container)
        for index in range(shards):
            plaintext = shard_parquet(index, rows)
            store.upload_stream(PLAINTEXT_CONTAINER, f"{name}-{index}.parquet", io.BytesIO(plaintext),
                                length=len(plaintext))  # fmt: skip
            sealed = io.BytesIO()
            seal(io.BytesIO(plaintext), sealed, public, CONTEXT)
            sealed_bytes += len(sealed.getbuffer())
            sealed.seek(0)
            store.upload_stream("datasets", f"{name}-{index}.sealed", sealed, length=len(sealed.getbuffer()))
    return sealed_bytes


def run_secure(stack_env: Path, spec_json: dict[str, Any], shards: int) -> dict[str, Any]:
    """``run_training`` from the sealed shards in Azurite; the KEK's private key arrives on stdin.

    The shards are handed over as the agent hands them after it resolved the owner-signed manifest (that
    lookup is one small blob per job, not part of what training costs).
    """
    from securetrain.core.contracts.job_spec import JobSpec  # noqa: PLC0415
    from securetrain.core.contracts.training import DatasetShard, JobKeys, NullProgress, TrainingSpec  # noqa: PLC0415
    from securetrain.tee.training import run_training  # noqa: PLC0415

    keys = JobKeys.from_released(KekPrivateKey.from_pem(sys.stdin.buffer.read()), KEK_ID)
    spec = TrainingSpec.for_job(JobSpec.from_json(spec_json), [
        DatasetShard(container="datasets", blob=f"{SHARD_NAME}-{i}.sealed", format="parquet", context=CONTEXT)
        for i in range(shards)
    ])  # fmt: skip
    with azurite_store(stack_env) as store:
        start = time.perf_counter()
        result = run_training(spec, keys, store, NullProgress(), threading.Event())
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "val_accuracy": result.metrics["val_accuracy"], "peak_rss_mib": peak_rss_mib()}


def job_spec(run_id: str, epochs: int) -> dict[str, Any]:
    return {
        "run_id": run_id, "nonce": "n" * 32, "kek_id": KEK_ID,
        "datasets": [{"container": "datasets", "manifest": "bench/manifest.json"}],
        "columns": {"label": "label"}, "model": MODEL,
        "hyperparameters": {"epochs": epochs, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE, "seed": SEED},
        "checkpoints": {"container": "checkpoints", "prefix": f"{run_id}/"},
        "output": {"container": "models", "blob": f"models/{run_id}.sealed"},
    }  # fmt: skip


def best_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run's figures, with the highest peak RSS of all runs."""
    best = min(runs, key=lambda run: run["seconds"])
    return {**best, "peak_rss_mib": max(run["peak_rss_mib"] for run in runs)}


def paired_ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each repeat's secure/plain wall-time ratio and their median, printed, as figures for the JSON line. A
    repeat's two runs ran back to back, so they met much the same load from the rest of the machine (Azurite's
    included, which shares its cores): the ratios' spread is how far the host moves one comparison, and their
    median a paired estimate that a single slow run of either side moves less than it moves the
    fastest-against-fastest ratio."""
    pairs = [secure["seconds"] / plain["seconds"] for plain, secure in zip(runs["plain"], runs["secure"], strict=True)]
    median = statistics.median(pairs)
    print(f"each repeat's secure/plain wall-time ratio: {', '.join(f'{pair:.3f}' for pair in pairs)}; median "
          f"{median:.3f}")  # fmt: skip
    return {"secure_plain_pair_ratios": [round(pair, 3) for pair in pairs],
            "secure_plain_median_pair_ratio": round(median, 3)}  # fmt: skip


def side_runs(module: str, repeats: int, common: list[str], spec: Callable[[int], dict[str, Any]],
              keys_pem: bytes) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Each side's figures from ``repeats`` runs of ``python -m module --role SIDE`` with ``common`` arguments, the
    secure side with the job ``spec(repeat)`` and the KEK's private key on stdin. The sides alternate which runs
    first: whichever side ran second against a freshly staged Azurite measured 1-2 s slower, and a burst of load
    on a shared machine should not fall on one side only. Both sides run under the allocator setting of the TEE's
    processes, so the secure side is measured as the agent runs it and the ratio does not count the setting."""
    environment = {**os.environ, **TEE_ALLOCATOR_ENVIRONMENT}
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "secure": []}
    for repeat in range(repeats):
        for side in ("plain", "secure") if repeat % 2 == 0 else ("secure", "plain"):
            argv, stdin = (common, b"") if side == "plain" else ([*common, "--spec", json.dumps(spec(repeat))], keys_pem)
            out = subprocess.run([sys.executable, "-m", module, "--role", side, *argv], input=stdin,
                                 stdout=subprocess.PIPE, env=environment, check=True)  # fmt: skip
            runs[side].append(json.loads(out.stdout.decode().strip().splitlines()[-1]))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256, help="generated tabular data, at least this much")
    parser.add_argument("--shards", type=int, default=4, help="number of Parquet shards")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating which runs first; the fastest counts")
    parser.add_argument("--role", choices=["plain", "secure"], help=argparse.SUPPRESS)
    parser.add_argument("--stack-env", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = math.ceil(args.size_mib * MIB / ROW_BYTES / args.shards)
    if args.role == "plain":
        print(json.dumps(run_plain(args.stack_env, args.shards, args.epochs)))
        return 0
    if args.role == "secure":
        print(json.dumps(run_secure(args.stack_env, json.loads(args.spec), args.shards)))
        return 0

    keys = released_keys()
    keys_pem, public = private_pem(keys.kek_private), keys.kek_public
    with running_stack((AZURITE,)) as (config, _):
        sealed_bytes = stage_shards(config.layout.env_file, public, args.shards, rows)
        common = ["--size-mib", str(args.size_mib), "--shards", str(args.shards), "--epochs", str(args.epochs),
                  "--stack-env", str(config.layout.env_file)]
        # Each secure run a run of its own: nothing to resume.
        runs = side_runs("benchmarks.trainer", args.repeats, common,
                         lambda repeat: job_spec(f"bench-{repeat}", args.epochs), keys_pem)  # fmt: skip
        plain, secure = best_run(runs["plain"]), best_run(runs["secure"])
    ratio = secure["seconds"] / plain["seconds"]
    print(f"data: {args.shards} shards, {rows * args.shards} rows, {sealed_bytes / MIB:.0f} MiB sealed; "
          f"{args.epochs} epochs of {MODEL}")  # fmt: skip
    print(f"plain PyTorch (plaintext, Azurite): {plain['seconds']:.1f} s, peak RSS {plain['peak_rss_mib']:.0f} MiB, "
          f"val_accuracy {plain['val_accuracy']:.4f}")  # fmt: skip
    print(f"run_training (sealed, Azurite):     {secure['seconds']:.1f} s, peak RSS {secure['peak_rss_mib']:.0f} MiB, "
          f"val_accuracy {secure['val_accuracy']:.4f}")  # fmt: skip
    print(f"secure/plain wall-time ratio: {ratio:.3f} (target <= 1.05); "
          f"secure overhead {secure['seconds'] - plain['seconds']:.1f} s")  # fmt: skip
    paired = paired_ratios(runs)
    print(json.dumps({
        "benchmark": "trainer", "sealed_mib": round(sealed_bytes / MIB, 1), "rows": rows * args.shards,
        "epochs": args.epochs, "repeats": args.repeats, "plain_seconds": round(plain["seconds"], 2),
        "secure_seconds": round(secure["seconds"], 2),
        "secure_plain_ratio": round(ratio, 3), **paired,
        "secure_overhead_seconds": round(secure["seconds"] - plain["seconds"], 2),
        "plain_peak_rss_mib": round(plain["peak_rss_mib"]),
        "secure_peak_rss_mib": round(secure["peak_rss_mib"]), "plain_val_accuracy": plain["val_accuracy"],
        "secure_val_accuracy": secure["val_accuracy"],
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
