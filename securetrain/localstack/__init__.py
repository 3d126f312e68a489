"""The local stack: the stand-ins for Azure services, run as local processes over HTTPS.

``securetrain stack up|status|down`` (see :mod:`securetrain.localstack.cli.stack`) drive :func:`up`, :func:`status`
and :func:`down`; tests use the same functions through the ``local_stack`` fixture. What runs is declared
in :mod:`securetrain.localstack.registry`; docs/local-stack.md describes the whole for users.

The names below are loaded on first use: clients that only read ``stack.env`` (storage, the agent's
client, every Airflow hook) import :mod:`securetrain.localstack.envfile`, and must not pay for the launcher,
which imports every stand-in (DAG files are parsed in well under a second).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_stack_env": "securetrain.localstack.envfile",
    "ServiceState": "securetrain.localstack.launcher",
    "ServiceStatus": "securetrain.localstack.launcher",
    "StackConfig": "securetrain.localstack.launcher",
    "down": "securetrain.localstack.launcher",
    "status": "securetrain.localstack.launcher",
    "up": "securetrain.localstack.launcher",
    "StackLayout": "securetrain.localstack.layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
