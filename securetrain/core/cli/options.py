"""Options shared by command groups that work on blob storage."""

from __future__ import annotations

import argparse


def add_container_option(group: argparse.ArgumentParser, *, container: str, holds: str) -> None:
    """``--container`` (default ``container``)."""
    group.add_argument("--container", default=container, help=f"the container holding {holds} (default {container})")
