"""Where the pipeline's signing keys are: an explicit path from the environment, else the local stack's file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from securetrain.core.errors import ConfigurationError


def signing_key_path(variable: str, local_path: Callable[[Path], Path], what: str) -> Path:
    """``$variable`` if set, else ``local_path(<the local stack's state directory>)``.

    In production the variable names a key provisioned for the pipeline (docs/audit.md, docs/models.md say
    where such keys belong); the local stack keeps its keys under its state directory.
    """
    explicit = os.environ.get(variable)
    if explicit:
        return Path(explicit)
    state_dir = os.environ.get("SECURETRAIN_STATE_DIR")
    if not state_dir:
        raise ConfigurationError(f"no {what}: set ${variable} (or SECURETRAIN_STATE_DIR for the local stack's)")
    return local_path(Path(state_dir))
