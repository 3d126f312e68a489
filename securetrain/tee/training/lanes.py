"""Lanes of a streamed epoch: which shards of a shuffle window feed which part of every batch.

A window's shards are dealt to ``SECURETRAIN_DATA_LANES`` lanes (the shard at position ``j`` of the window goes
to lane ``j mod L``). Each lane shuffles its own rows and gives every batch of ``B`` rows a fixed sub-batch:
rows ``[B*l//L, B*(l+1)//L)`` of the batch come from lane ``l``; a lane whose rows have run out gives the window's
later batches none, and the window has as many batches as its longest lane needs. The order is a function of the
seed and the data-path settings alone, never of how many workers train: with ``N`` workers (``L`` a multiple of
``N``) worker ``r`` reads only the shards of lanes ``l`` with ``l mod N == r`` and trains on their sub-batches,
and the group's batches are those of one process. docs/trainer.md ("The data path", "Several workers in one TEE").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from securetrain.core.errors import ConfigurationError


class LanesRefused(ConfigurationError):
    """The data path's lanes cannot be split among the workers, or cannot fill a batch."""


@dataclass(frozen=True)
class Lanes:
    """The lanes of a streamed epoch, and those this process reads (all of them in one process)."""

    #: How many lanes (``SECURETRAIN_DATA_LANES``).
    count: int
    #: Rows of a global batch.
    batch_size: int
    #: The lanes this process reads, in lane order.
    owned: tuple[int, ...]

    @classmethod
    def of(cls, count: int, batch_size: int, rank: int = 0, workers: int = 1) -> Lanes:
        """The lanes worker ``rank`` of ``workers`` reads; refused unless each worker can take whole lanes and
        every lane a row of each batch."""
        if count % workers:
            raise LanesRefused(
                f"a streamed dataset is read in {count} lanes (SECURETRAIN_DATA_LANES) and each of the {workers} "
                f"training workers (SECURETRAIN_TRAINING_WORKERS) must read whole lanes: set SECURETRAIN_DATA_LANES "
                f"to a multiple of SECURETRAIN_TRAINING_WORKERS"
            )
        if batch_size < count:
            raise LanesRefused(
                f"the job's batch size {batch_size} is smaller than the {count} lanes (SECURETRAIN_DATA_LANES) a "
                "streamed dataset is read in, each of which gives every batch at least one row: use a batch size of "
                "at least SECURETRAIN_DATA_LANES"
            )
        return cls(count, batch_size, tuple(lane for lane in range(count) if lane % workers == rank))

    def lane_of(self, position: int) -> int:
        """The lane of the shard at ``position`` in its window."""
        return position % self.count

    def reads(self, position: int) -> bool:
        """Whether this process reads the shard at ``position`` in its window."""
        return self.lane_of(position) in self.owned

    def sub_batch(self, lane: int) -> int:
        """The rows lane ``lane`` gives each batch (while it has rows)."""
        return self.batch_size * (lane + 1) // self.count - self.batch_size * lane // self.count

    def batches(self, lane_rows: Sequence[int]) -> int:
        """The batches of a window whose lanes hold ``lane_rows`` training rows: as many as the longest lane needs."""
        return max((math.ceil(rows / self.sub_batch(lane)) for lane, rows in enumerate(lane_rows)), default=0)

    def taken(self, lane: int, rows: int, batch: int) -> int:
        """The rows lane ``lane``, holding ``rows``, gives batch ``batch``."""
        size = self.sub_batch(lane)
        return max(0, min(size, rows - batch * size))

    def batch_rows(self, lane_rows: Sequence[int], batch: int) -> int:
        """The rows of batch ``batch`` of a window whose lanes hold ``lane_rows`` rows, all lanes together."""
        return sum(self.taken(lane, rows, batch) for lane, rows in enumerate(lane_rows))

    def window_share(self, window_shards: int) -> int:
        """At most how many shards of a window of ``window_shards`` this process reads."""
        return sum(1 for position in range(window_shards) if self.reads(position))
