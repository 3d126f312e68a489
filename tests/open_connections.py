"""Which TCP connections the test process holds open: a client that lives on must not keep one to a service it is
done with (a server being stopped waits for it)."""

from __future__ import annotations

from urllib.parse import urlsplit

import psutil


def connections_to(url: str) -> set[tuple[str, int]]:
    """This process's open TCP connections to ``url``'s port, by their local address."""
    port = urlsplit(url).port
    return {tuple(c.laddr) for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED}  # fmt: skip
