"""The TEE's ephemeral RSA keys, made before they are asked for.

Making an RSA-3072 key means finding two 1536-bit primes: ~100-300 ms of one core here, and its time varies a lot
from key to key. Made on demand it would sit on every job's path from submission to Secure Key Release, beside an
attestation and a release that take a few milliseconds each (docs/keys.md, "The key path"). The supply keeps one
key made in the background while the TEE waits and hands each key out once; taking one starts the next. Keys live
only in this process's memory, like a key made on demand: one made and never taken dies with the process.
OpenSSL releases the GIL while it searches for primes, so the background work does not hold up the agent's
request threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from securetrain.tee.attest import TeeKey


class TeeKeySupply:
    """Fresh :class:`~securetrain.tee.attest.TeeKey` instances, one made ahead; never the same key twice."""

    def __init__(self, make: Callable[[], TeeKey] = TeeKey) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tee-key")
        self._next: Future[TeeKey] = self._maker.submit(make)

    def take(self) -> TeeKey:
        """The key made ahead (waiting for it if it is still being made), and start making the next."""
        with self._lock:
            ready, self._next = self._next, self._maker.submit(self._make)
        return ready.result()

    def close(self) -> None:
        """Stop making keys (a key being made is finished, then dropped)."""
        self._maker.shutdown(wait=False, cancel_futures=True)
