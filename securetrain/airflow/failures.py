"""How securetrain's errors fail an Airflow task: a security violation or a configuration error at once and
without retry, any other error by propagating to the task's bounded retries (docs/workflow.md, "Errors and retries").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from airflow.sdk.exceptions import AirflowFailException
from securetrain.core.errors import ConfigurationError, SecurityViolation

#: Default arguments for securetrain's stage operators: bounded retries with exponential backoff.
RETRY_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}


class SecurityCheckFailed(AirflowFailException):
    """A security check of a stage said no; the task fails without retry."""


@contextmanager
def fail_closed(stage: str) -> Iterator[None]:
    """Translate securetrain's errors raised inside into the task outcome they call for."""
    try:
        yield
    except SecurityViolation as exc:
        raise SecurityCheckFailed(f"{stage}: security check failed ({type(exc).__name__}): {exc}") from exc
    except ConfigurationError as exc:
        raise AirflowFailException(f"{stage}: {type(exc).__name__}: {exc}") from exc
