"""The local stack: the stand-ins for Azure services, run as local processes over HTTPS (docs/local-stack.md).

``securetrain stack up|status|down`` and the tests' ``local_stack`` fixture drive :func:`up`, :func:`status` and
:func:`down`. The names below are loaded on first use: the stand-ins' own processes import modules of this
package and must not load the launcher, which imports every service.
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
