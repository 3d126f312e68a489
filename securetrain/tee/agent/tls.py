"""Who is calling: the verified client certificate of each mutual-TLS connection, given to the app.

uvicorn checks the client certificate during the handshake (``ssl_cert_reqs=CERT_REQUIRED`` against the
stack CA: no certificate, or one from another CA, and the connection is refused before HTTP starts), but
it does not pass the certificate on to the application. :class:`MutualTlsH11Protocol` is uvicorn's h11
protocol with one addition: when a connection is made it reads the peer certificate from the TLS object
and puts it into every request's scope as the ASGI TLS extension (``scope["extensions"]["tls"]``, with
``client_cert_name`` as RFC 4514 text), plus the certificate's common name under ``client_cert_cn``.
It is passed to uvicorn as ``http=MutualTlsH11Protocol``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from uvicorn.protocols.http.h11_impl import H11Protocol

TLS_EXTENSION = "tls"


def client_certificate_info(transport: asyncio.Transport) -> dict[str, Any] | None:
    """The TLS extension entries for ``transport``'s verified peer certificate, or None without one."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    certificate = x509.load_der_x509_certificate(der)
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "client_cert_name": certificate.subject.rfc4514_string(),
        "client_cert_cn": str(common_names[0].value) if len(common_names) == 1 else None,
        "tls_version": None,
        "cipher_suite": None,
    }


class MutualTlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that hands each request the connection's client certificate."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        info = client_certificate_info(transport)
        if info is None:
            return
        app = self.app

        async def with_client_certificate(scope: Any, receive: Any, send: Any) -> None:
            extensions = dict(scope.get("extensions") or {})
            extensions[TLS_EXTENSION] = info
            await app({**scope, "extensions": extensions}, receive, send)

        self.app = with_client_certificate
