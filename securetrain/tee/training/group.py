"""One worker's part in a data-parallel group: the same global batches as a single process, split among the workers.

Every worker steps through the same sequence of global batches (the data path's order is a function of the
seed and the data-path settings, never of the worker count), and the data path gives each worker its part of
each batch (:class:`~securetrain.tee.training.loop.Step`). In memory, worker ``r`` of ``W`` trains on the
contiguous rows ``[B*r//W, B*(r+1)//W)`` of each batch of ``B`` rows; streamed, each worker reads only its
lanes' shards and trains on their part of each batch (:mod:`~securetrain.tee.training.lanes`).
DistributedDataParallel sums the workers' gradients weighted by their share of the batch's rows (a
communication hook), which is the single-process gradient of the batch's mean loss however unevenly a batch
splits. Only the order of floating-point sums differs from one process: the tolerance in docs/trainer.md
("Several workers in one TEE").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from securetrain.tee.training.checkpoint import Progress
from securetrain.tee.training.loop import Step, Training

#: Progress metrics that are sums over the rows a worker trained on; the group's value is their sum.
_SUMMED = ("train_loss", "train_loss_sum")


@dataclasses.dataclass
class _Share:
    """This worker's share of the current global batch's rows, read by the gradient hook."""

    weight: float = 1.0


class DataParallelGroup:
    """The worker's rank in a process group met on the launcher's loopback TCP store."""

    def __init__(self, rank: int, world_size: int, port: int, timeout_s: int, device: torch.device) -> None:
        self.rank, self.world_size = rank, world_size
        self._device = device
        self._share = _Share()
        # gloo on the CPU; NCCL between GPUs (one per worker), untested here.
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )  # fmt: skip

    @property
    def leads(self) -> bool:
        """Whether this worker writes the checkpoints and the model and reports progress (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def share(self, training: Training, start: Progress) -> tuple[Training, Progress]:
        """``training`` as this worker steps through it, and where it starts: the model under DDP, each step's
        gradient weighed by its share of the batch; a resumed epoch's loss so far counted once (by the leader)."""
        module = DistributedDataParallel(training.module)
        module.register_comm_hook(self._share, _weighted_sum)

        def windows(epoch: int, first: int) -> Iterator[tuple[int, Iterable[Step]]]:
            for window, steps in training.windows(epoch, first):
                yield window, self._weighed(steps)

        ours = dataclasses.replace(training, module=module, windows=windows)
        if not self.leads:
            start = dataclasses.replace(start, metrics={k: v for k, v in start.metrics.items() if k != "train_loss_sum"})
        return ours, start

    def _weighed(self, steps: Iterable[Step]) -> Iterator[Step]:
        """Each of this worker's steps, its share of the batch's rows set for the gradient hook."""
        for step in steps:
            if step.rows:
                self._share.weight = step.rows / step.batch_rows
                yield step
            else:
                # No rows of this batch here: this worker still takes part in the step (DDP's all-reduce needs every
                # worker) with one row of zeros whose gradient counts zero times and whose loss counts for no row.
                self._share.weight = 0.0
                x, y = step.features, step.labels
                yield Step(x.new_zeros((1, *x.shape[1:])), y.new_zeros(1), 0, step.batch_rows)

    def combine(self, progress: Progress) -> Progress:
        """``progress`` with the row sums of every worker added up (a collective: every worker calls it)."""
        names = [name for name in _SUMMED if name in progress.metrics]
        if not names:
            return progress
        sums = torch.tensor([progress.metrics[name] for name in names], dtype=torch.float64, device=self._device)
        dist.all_reduce(sums)
        return dataclasses.replace(progress, metrics={**progress.metrics, **dict(zip(names, sums.tolist(), strict=True))})


# Unannotated: DDP checks a hook's annotations against the real types, and this module's are strings.
def _weighted_sum(share, bucket):  # type: ignore[no-untyped-def]
    """Each worker's mean-loss gradient (a ``dist.GradBucket``) times its share of the batch's rows, summed over
    the group: a future of the summed bucket."""
    tensor = bucket.buffer()
    tensor.mul_(share.weight)
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda done: done.value()[0])
