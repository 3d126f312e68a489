"""The local stack: the stand-ins for Azure services, run as local processes over HTTPS.

``securetrain stack up|status|down`` (see :mod:`securetrain.cli.stack`) drive :func:`up`, :func:`status`
and :func:`down`; tests use the same functions through the ``local_stack`` fixture. What runs is declared
in :mod:`securetrain.stack.registry`; docs/local-stack.md describes the whole for users.
"""

from securetrain.stack.envfile import read_stack_env
from securetrain.stack.launcher import ServiceState, ServiceStatus, StackConfig, down, status, up
from securetrain.stack.layout import StackLayout

__all__ = [
    "ServiceState",
    "ServiceStatus",
    "StackConfig",
    "StackLayout",
    "down",
    "read_stack_env",
    "status",
    "up",
]
