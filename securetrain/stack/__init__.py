"""The local stack: the stand-ins for Azure services, run as local processes over HTTPS.

``securetrain stack up|status|down`` (see :mod:`securetrain.cli.stack`) drive :func:`up`, :func:`status`
and :func:`down`; tests use the same functions through the ``local_stack`` fixture. What runs is declared
in :mod:`securetrain.stack.registry`; docs/local-stack.md describes the whole for users.

The names below are loaded on first use: clients that only read ``stack.env`` (storage, the agent's
client, every Airflow hook) import :mod:`securetrain.stack.envfile`, and must not pay for the launcher,
which imports every stand-in (DAG files are parsed in well under a second).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_stack_env": "securetrain.stack.envfile",
    "ServiceState": "securetrain.stack.launcher",
    "ServiceStatus": "securetrain.stack.launcher",
    "StackConfig": "securetrain.stack.launcher",
    "down": "securetrain.stack.launcher",
    "status": "securetrain.stack.launcher",
    "up": "securetrain.stack.launcher",
    "StackLayout": "securetrain.stack.layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
