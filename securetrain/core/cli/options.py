"""Options shared by command groups that work on the local stack's storage."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_stack_storage_options(group: argparse.ArgumentParser, *, container: str, holds: str) -> None:
    """``--state-dir`` (the stack whose stack.env to use) and ``--container`` (default ``container``)."""
    group.add_argument(
        "--state-dir", type=Path, default=None,
        help="the local stack's state directory (default: $SECURETRAIN_STATE_DIR or <repo>/.securetrain)",
    )  # fmt: skip
    group.add_argument("--container", default=container, help=f"the container holding {holds} (default {container})")
