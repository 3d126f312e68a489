"""The HTTP policy's refusals and its reading of Azure SDK errors, without a server."""

from __future__ import annotations

import ssl

import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.core.http import AzureErrors, HttpsSession, ServiceRequestFailed, TlsVerificationFailed


class Refused(SecurityViolation):
    pass


def test_a_session_sends_https_only_and_never_unverified() -> None:
    with HttpsSession() as session, pytest.raises(SecurityViolation, match="not an https URL"):
        session.get("http://127.0.0.1:9/")
    with pytest.raises(ConfigurationError, match="cannot be switched off"):
        HttpsSession(False)


def test_azure_errors_read_as_the_services_own() -> None:
    errors = AzureErrors("the service", Refused)
    with pytest.raises(Refused, match="cannot read thing: this process's identity obtained no token"):
        with errors.translated("read", "thing"):
            raise ClientAuthenticationError("no credential worked")
    tls = ServiceRequestError("handshake", error=ssl.SSLCertVerificationError(1, "certificate verify failed"))
    with pytest.raises(TlsVerificationFailed, match="cannot read thing: TLS verification failed"):
        with errors.translated("read", "thing"):
            raise tls
    with pytest.raises(ServiceRequestFailed, match="no answer after 4 attempts"):
        with errors.translated("read", "thing"):
            raise ServiceRequestError("connection refused")
