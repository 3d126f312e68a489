"""The root of securetrain's exceptions.

Every failure the product reports is a subclass of :class:`SecuretrainError` whose message names what
failed. ``exit_code`` is what the command line exits with; ``security_violation`` tells the Airflow layer
whether the failure must fail the task without retry (a security check said no) or may be retried.
"""


class SecuretrainError(Exception):
    """A failure securetrain can explain. The message says what failed and, where it can, what to do."""

    exit_code: int = 1
    security_violation: bool = False


class SecurityViolation(SecuretrainError):
    """A security check said no: tampering, a forged or wrong key, a refused policy. Never retried."""

    exit_code = 3
    security_violation = True


class ConfigurationError(SecuretrainError):
    """A setting, file or argument is missing or malformed; the message says which."""

    exit_code = 2
