"""How securetrain's processes log: their own records at INFO, the libraries' bookkeeping only from WARNING.

The Azure SDK logs every HTTP request and response, with their headers, at INFO, and Great Expectations logs its
registries' bookkeeping at INFO as it imports. In the TEE agent's log the two made about two thirds of the lines,
between the job's own records (attesting, releasing, each epoch) that an operator or a reviewer reads there.
Their warnings and errors still show.
"""

from __future__ import annotations

import logging
import sys

#: The libraries whose INFO records are bookkeeping rather than what the process did.
CHATTY_LIBRARIES = ("azure", "great_expectations")


def quiet_libraries() -> None:
    """Log the chatty libraries from WARNING only, whoever configured the handlers (Airflow configures its own)."""
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(log_format: str, *, verbose: bool = False, force: bool = False) -> None:
    """Log to stderr in ``log_format``: INFO with the chatty libraries quiet, or with ``verbose`` DEBUG and
    everything. ``force`` replaces the root logger's handlers, whatever set them up before."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=log_format, stream=sys.stderr,
                        force=force)  # fmt: skip
    if not verbose:
        quiet_libraries()
