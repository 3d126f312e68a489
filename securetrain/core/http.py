"""How securetrain talks HTTP: https only, verified TLS, bounded retries, and one reading of Azure's errors.

``requests`` clients use :class:`HttpsSession`, Azure SDK clients :func:`azure_client_options`, and
:class:`AzureErrors` turns the Azure SDKs' exceptions into the project's; the policy is in docs/architecture.md
("HTTP: one policy for every client"). A **TLS failure is never retried** (:func:`tls_failure`): it is a
security check saying no.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy
from azure.storage.blob import ExponentialRetry
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation

#: Retries after the first attempt of a request: at most four attempts.
RETRIES = 3
#: Retry n waits BACKOFF_S * 2 ** (n - 1), except the first, which is immediate (urllib3's and azure-core's rule).
BACKOFF_S = 1.0
#: Statuses a ``requests`` client retries: a gateway or a service that is restarting.
RETRY_STATUSES = (502, 503, 504)
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60


def tls_failure(error: BaseException | None) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind ``error``, which the transports wrap (azure-core's wraps requests', which
    wraps urllib3's) in ``inner_exception``, ``__cause__``, ``__context__`` or ``args``: all are followed."""
    pending: list[object] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        pending.extend((current.__cause__, current.__context__, getattr(current, "inner_exception", None)))
        pending.extend(current.args)
    return None


class _UrllibRetry(Retry):
    """urllib3's retry within the bounds; a TLS failure is raised at once instead of being counted."""

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        if tls_failure(kwargs.get("error")) is not None:
            raise kwargs["error"]
        return super().increment(*args, **kwargs)


class HttpsSession(requests.Session):
    """A ``requests`` session that sends https only, verifies TLS against ``verify`` (a CA bundle's path, or True
    for the system's roots) and retries connection failures and 502/503/504, for any method, ``retries`` times.
    ``resend`` False: a request whose answer was lost is not sent again (where a repeat would spend a nonce)."""

    def __init__(self, verify: str | bool = True, *, resend: bool = True, retries: int = RETRIES) -> None:
        if verify is False:
            raise ConfigurationError("TLS verification cannot be switched off; give the CA bundle to trust instead")
        super().__init__()
        self._verify = verify
        retry = _UrllibRetry(
            total=retries, connect=retries, read=retries if resend else 0, status=retries, backoff_factor=BACKOFF_S,
            status_forcelist=RETRY_STATUSES, allowed_methods=None, raise_on_status=False,
        )  # fmt: skip
        self.mount("https://", HTTPAdapter(max_retries=retry))

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        # Every request passes here, redirects included. Verification is set per request because requests
        # lets REQUESTS_CA_BUNDLE override a session's own setting.
        if urlsplit(request.url or "").scheme != "https":
            raise SecurityViolation(f"{request.url} is not an https URL; securetrain talks HTTP over TLS only")
        kwargs["verify"] = self._verify
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        return super().send(request, **kwargs)


class _TlsFailureIsFinal:
    """For azure-core retry policies, which count a TLS failure as a connection error: it ends the retries."""

    def increment(self, settings: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        final = tls_failure(kwargs.get("error")) is not None
        return not final and super().increment(settings, *args, **kwargs)  # type: ignore[misc]


class AzureRetry(_TlsFailureIsFinal, RetryPolicy):
    """azure-core's retry within the bounds (it honours the ``Retry-After`` of a throttled Key Vault)."""

    def __init__(self) -> None:
        super().__init__(retry_total=RETRIES, retry_connect=RETRIES, retry_read=RETRIES, retry_status=RETRIES,
                         retry_backoff_factor=BACKOFF_S)  # fmt: skip


class StorageRetry(_TlsFailureIsFinal, ExponentialRetry):
    """azure-storage-blob's retry within the bounds: its clients need its own, which records where they answered."""

    def __init__(self) -> None:
        super().__init__(retry_total=RETRIES, retry_connect=RETRIES, retry_read=RETRIES, retry_status=RETRIES)

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        retry = settings["count"]
        return 0.0 if retry <= 1 else BACKOFF_S * 2 ** (retry - 1)


def azure_client_options(
    ca_bundle: str | os.PathLike[str] | None, retry: type[AzureRetry] | type[StorageRetry] = AzureRetry
) -> dict[str, Any]:
    """The keyword arguments of every Azure SDK client: TLS verified against ``ca_bundle`` (None: the system's
    roots), the timeouts, and a ``retry`` policy (:class:`StorageRetry` for azure-storage-blob's clients)."""
    verify = str(ca_bundle) if ca_bundle is not None else True
    return {"connection_verify": verify, "connection_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
            "retry_policy": retry()}  # fmt: skip


class TlsVerificationFailed(SecurityViolation):
    """A server's TLS certificate did not verify against the trusted CAs."""


class ServiceRequestFailed(SecuretrainError):
    """A service answered with an error no more specific class covers."""


@dataclass(frozen=True)
class AzureErrors:
    """How one service's Azure SDK errors read as the project's: no token or a refusal (HTTP 401/403) is an
    access denial, 404 not found, a TLS failure a TLS error, no answer unreachable, anything else a failed
    request; each kind raises the class named here, and a refusal says what to do."""

    service: str
    access_denied: type[SecurityViolation]
    tls: type[SecurityViolation] = TlsVerificationFailed
    failed: type[SecuretrainError] = ServiceRequestFailed
    not_found: type[SecuretrainError] | None = None  # None: failed
    unreachable: type[SecuretrainError] | None = None  # None: failed
    when_denied: str = "check that the identity holds a role that allows it"
    refusals: frozenset[int] = frozenset({401, 403})

    @contextlib.contextmanager
    def translated(self, operation: str, target: str) -> Iterator[None]:
        """Raise the SDK exceptions raised inside as this service's; messages read "cannot {operation} {target}"."""
        try:
            yield
        except HttpResponseError as exc:  # ClientAuthenticationError included
            raise self._answer(exc, operation, target) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            tls = tls_failure(exc)
            if tls is not None:
                reason = getattr(tls, "reason", None) or tls  # set by the ssl module on what it raises
                raise self.tls(
                    f"cannot {operation} {target}: TLS verification failed ({reason}); the server's "
                    "certificate does not chain to the CAs this process trusts (its CA bundle, else the system's)"
                ) from exc
            raise (self.unreachable or self.failed)(
                f"cannot {operation} {target}: no answer after {RETRIES + 1} attempts ({exc.message}); is the "
                "endpoint right and the service up?"
            ) from exc
        except AzureError as exc:
            raise self.failed(f"cannot {operation} {target}: {exc.message}") from exc

    def _answer(self, error: HttpResponseError, operation: str, target: str) -> SecuretrainError:
        status = error.status_code
        if isinstance(error, ClientAuthenticationError) and status is None:
            # Raised by the credential before any request reached the service: the identity got no token.
            return self.access_denied(
                f"cannot {operation} {target}: this process's identity obtained no token ({error.message})"
            )
        # The error body's code and message (OData: Key Vault), else storage's error code (an enum) and reason.
        code = error.error.code if error.error is not None else getattr(error, "error_code", None)
        code = getattr(code, "value", code) or "no error code"
        reason = error.error.message if error.error is not None else str(error.reason or error.message).splitlines()[0]
        if isinstance(error, ClientAuthenticationError) or status in self.refusals:
            return self.access_denied(
                f"{self.service} refused to {operation} {target} (HTTP {status} {code}: {reason}); {self.when_denied}"
            )
        if status == 404:
            return (self.not_found or self.failed)(f"cannot {operation} {target}: it does not exist ({code}: {reason})")
        return self.failed(f"cannot {operation} {target}: HTTP {status} {code}: {reason}")
