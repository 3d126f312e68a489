"""Free loopback ports for a stack of one's own (tests, benchmarks): a stack beside another never collides."""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (held together so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port_pair(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A loopback port free together with the next one, neither in ``taken`` (the vTPM's two channels)."""
    for _ in range(100):
        [port] = free_ports(1)
        if port >= 65535 or {port, port + 1} & taken:
            continue
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("found no two adjacent free loopback ports")
