"""DP-SGD beside plain training in the same process: step time ratio, held-out accuracy, ε spent.

Both sides run the trainer's own loop (``securetrain.tee.training.loop.train``) on the same in-memory data,
model, optimizer, batch size, epochs and seed; the private side goes through ``DpSgd`` exactly as
``run_training`` does when the training spec asks for privacy (per-sample gradients, clipping, noise, Poisson
sampling). Storage and sealing are left out: ``benchmarks.trainer`` measures those, and they are the same
with or without differential privacy.

Data:

- ``breast-cancer``: the bundled table (569 rows, 30 features), ``mlp`` with hidden [16];
- ``synthetic``: ``--rows`` generated rows of 64 float32 features (a label a small MLP can learn),
  ``mlp`` with hidden [128, 64].

Figures per dataset: seconds per step of each side (the epoch's held-out evaluation included, alike on both)
and their ratio ``dp_plain_step_ratio``, held-out accuracy of both, and the ε the private run spent at δ.
Each side runs ``--repeats`` times, alternating, and its fastest run counts (the machine may be shared).

Usage: ``python -m benchmarks.dp_sgd [--rows 50000] [--epsilon 3] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks.stack import released_keys
from securetrain.core.contracts.job_spec import Hyperparameters, PrivacyRequest
from securetrain.core.contracts.training import JobKeys
from securetrain.core.datasets import bundled_table
from securetrain.tee.training.checkpoint import Progress
from securetrain.tee.training.data import TrainingData
from securetrain.tee.training.loop import (
    Standardization,
    Trainee,
    Training,
    build_trainee,
    data_shape,
    plain_training,
    split_rows,
    train,
)
from securetrain.tee.training.privacy import DpSgd, plan_privacy

SEED = 5
DELTA = 1e-5
MAX_GRAD_NORM = 1.0


def breast_cancer() -> TrainingData:
    table = bundled_table("breast-cancer")
    names = tuple(name for name in table.column_names if name != "label")
    features = torch.from_numpy(np.stack([table.column(name).to_numpy() for name in names], axis=1).astype(np.float32))
    return TrainingData(features, torch.from_numpy(table.column("label").to_numpy()), names, names, "label")


def synthetic(rows: int) -> TrainingData:
    rng = np.random.default_rng(SEED)
    features = rng.standard_normal((rows, 64), dtype=np.float32)
    labels = (features[:, :8].sum(axis=1) + 0.5 * rng.standard_normal(rows, dtype=np.float32) > 0).astype(np.int64)
    names = tuple(f"f{j:02d}" for j in range(64))
    return TrainingData(torch.from_numpy(features), torch.from_numpy(labels), names, names, "label")


def run_side(data: TrainingData, params: dict[str, Any], hyper: Hyperparameters,
             private: Callable[[Trainee, torch.Tensor], Training] | None) -> dict[str, Any]:  # fmt: skip
    """Train once; seconds per step and the final held-out accuracy."""
    device = torch.device("cpu")
    rows = split_rows(data.rows, hyper.seed)
    trainee = build_trainee("mlp", params, hyper, data_shape(data), Standardization.of(data, rows[0]), device)
    training = private(trainee, rows[0]) if private else plain_training(trainee, data, rows[0], hyper, device)
    start = time.perf_counter()
    final = train(trainee, training, (data, rows[1]), hyper, Progress(0, 0, {}), device, threading.Event(), lambda _: None)
    seconds = time.perf_counter() - start
    return {"step_seconds": seconds / final.step, "steps": final.step, "val_accuracy": final.metrics["val_accuracy"],
            "training": training}  # fmt: skip


def compare(name: str, data: TrainingData, params: dict[str, Any], hyper: Hyperparameters, epsilon: float,
            keys: JobKeys, repeats: int) -> dict[str, Any]:  # fmt: skip
    request = PrivacyRequest(epsilon=epsilon, delta=DELTA, max_grad_norm=MAX_GRAD_NORM)
    plan = plan_privacy(request, data.rows, hyper.batch_size, hyper.epochs)
    plains, privates, spent = [], [], None
    for _ in range(repeats):
        plains.append(run_side(data, params, hyper, None))
        dp = DpSgd(plan, keys, f"bench-{name}", hyper.seed)
        privates.append(run_side(data, params, hyper,
                                 lambda trainee, train_rows: dp.training(trainee, data, train_rows, hyper.batch_size,
                                                                         torch.device("cpu"), ())))  # fmt: skip
        spent = dp.spent()
    plain = min(plains, key=lambda side: side["step_seconds"])
    private = min(privates, key=lambda side: side["step_seconds"])
    figures = {
        "rows": data.rows, "features": data.feature_shape[0], "model": {"name": "mlp", "params": params},
        "epochs": hyper.epochs, "batch_size": hyper.batch_size, "steps": private["steps"],
        "plain_step_ms": round(plain["step_seconds"] * 1000, 3), "dp_step_ms": round(private["step_seconds"] * 1000, 3),
        "dp_plain_step_ratio": round(private["step_seconds"] / plain["step_seconds"], 2),
        "plain_val_accuracy": round(plain["val_accuracy"], 4), "dp_val_accuracy": round(private["val_accuracy"], 4),
        "epsilon_requested": epsilon, "epsilon_spent": round(spent.epsilon, 4), "delta": DELTA,
        "noise_multiplier": round(spent.noise_multiplier, 4), "sample_rate": round(spent.sample_rate, 6),
        "max_grad_norm": MAX_GRAD_NORM, "accountant": spent.accountant,
    }  # fmt: skip
    print(f"{name}: {data.rows} rows, {hyper.epochs} epochs, batch {hyper.batch_size}, {figures['steps']} steps; "
          f"step {figures['plain_step_ms']:.2f} ms plain, {figures['dp_step_ms']:.2f} ms DP-SGD "
          f"(ratio {figures['dp_plain_step_ratio']:.2f}); held-out accuracy {figures['plain_val_accuracy']:.4f} plain, "
          f"{figures['dp_val_accuracy']:.4f} DP-SGD; epsilon {figures['epsilon_spent']:.3f} spent of {epsilon} at "
          f"delta {DELTA} (noise multiplier {figures['noise_multiplier']:.3f})", flush=True)  # fmt: skip
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the synthetic table")
    parser.add_argument("--epsilon", type=float, default=3.0, help="the epsilon both private runs ask for")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side; the fastest counts")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    keys = released_keys(2048)
    results = {
        "breast_cancer": compare("breast-cancer", breast_cancer(), {"hidden": [16]},
                                 Hyperparameters(epochs=20, batch_size=64, learning_rate=0.01, seed=SEED),
                                 args.epsilon, keys, args.repeats),  # fmt: skip
        "synthetic": compare("synthetic", synthetic(args.rows), {"hidden": [128, 64]},
                             Hyperparameters(epochs=3, batch_size=1024, learning_rate=0.001, seed=SEED),
                             args.epsilon, keys, args.repeats),  # fmt: skip
    }
    print(json.dumps({"benchmark": "dp_sgd", "repeats": args.repeats, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
