"""The C allocator's setting the TEE's processes run under, and the agent's check of it as it starts.

glibc gives each thread that allocates its own arena and keeps freed memory there for reuse; streamed training
allocates shard-sized buffers from several threads (downloads, decryption, decoding, training), so at glibc's
defaults each arena keeps its own peak and the process's resident memory outgrows the configured data budget.
One arena for every thread kept the streaming benchmark's growth 30-40 MiB lower at no measurable CPU cost
(docs/trainer.md, "Streaming"). glibc reads ``MALLOC_ARENA_MAX`` once, as a process starts, and arenas made
before a ``mallopt`` call stay in use, so the setting belongs in the environment the agent is started with (the
image's ``ENV``, the confidential VM's service unit, the local stack's agent); the training workers inherit it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: What the environment of the TEE's agent sets for the allocator.
TEE_ALLOCATOR_ENVIRONMENT: Mapping[str, str] = {"MALLOC_ARENA_MAX": "1"}


def warn_if_allocator_untuned(environment: Mapping[str, str] = os.environ) -> None:
    """Log a warning naming each allocator variable ``environment`` lacks or sets otherwise: training still
    runs, but a streamed dataset's resident memory may exceed its budget."""
    for name, value in TEE_ALLOCATOR_ENVIRONMENT.items():
        if environment.get(name) != value:
            log.warning("%s is %s, not %s: a streamed dataset's memory may exceed SECURETRAIN_DATA_STREAM_BUDGET_BYTES "
                        "by the allocator's per-thread arenas; start the agent with %s=%s (docs/trainer.md, "
                        "\"Streaming\")", name, repr(environment[name]) if name in environment else "unset", value,
                        name, value)  # fmt: skip
