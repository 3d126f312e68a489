"""The agent's supply of per-job TEE keys: each key handed out once, made ahead, never shared."""

from __future__ import annotations

import threading

from securetrain.tee.attest import TeeKey
from securetrain.tee.key_supply import TeeKeySupply


def test_every_take_is_a_fresh_key_and_the_next_is_made_ahead() -> None:
    made: list[TeeKey] = []
    made_twice = threading.Event()

    def make() -> TeeKey:
        made.append(TeeKey())
        if len(made) == 2:
            made_twice.set()
        return made[-1]

    supply = TeeKeySupply(make)
    try:
        first = supply.take()
        # Taking the first starts the second before anyone asks for it.
        assert made_twice.wait(timeout=30)
        second, third = supply.take(), supply.take()
    finally:
        supply.close()
    assert len({first.kid, second.kid, third.kid}) == 3
    assert [first, second] == made[:2]


def test_takes_from_many_threads_never_share_a_key() -> None:
    supply = TeeKeySupply()
    taken: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        key = supply.take()
        with lock:
            taken.append(key.kid)

    threads = [threading.Thread(target=take) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        supply.close()
    assert len(taken) == 4 and len(set(taken)) == 4
