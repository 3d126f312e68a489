"""Why the local stack could not be started, checked or stopped."""

from __future__ import annotations

from securetrain.core.errors import ConfigurationError, SecuretrainError


class StackError(SecuretrainError):
    """The local stack could not do what was asked; the message names the service and the cause."""


class StackConfigurationError(StackError, ConfigurationError):
    """A stack setting (state directory, port, service registry) is malformed."""


class ToolNotInstalled(StackError, ConfigurationError):
    """A program a service needs (Node.js, Azurite) is not installed where the stack looks for it."""


class PortInUse(StackError, ConfigurationError):
    """The port a service should listen on is already taken by a process the stack did not start."""


class ServiceStartFailed(StackError):
    """A service exited during start-up or did not become healthy within its start-up time."""


class CorruptPidFile(StackError):
    """A PID file exists but cannot be read; the stack will not guess which process it meant."""
