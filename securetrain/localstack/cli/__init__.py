"""The local stack's command groups (``securetrain stack | demo | airflow | snp``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from securetrain.localstack.layout import STATE_DIR_ENV


def add_state_dir(parser: argparse.ArgumentParser, what: str) -> None:
    """``--state-dir DIR``: the local stack's state directory, ``what`` saying what the command keeps there."""
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help=f"{what} (default: ${STATE_DIR_ENV}, else .securetrain/ at the repository root)")  # fmt: skip
