"""What a benchmark runs against, made alike by each: a KEK generated as if released, and a local stack.

Key release is measured with the agent (``benchmarks.release_latency``); the benchmarks of what comes after it
make the KEK here, in memory. The stack runs in a temporary state directory, every service on a free port, and is
brought down when the benchmark leaves it, whatever happened.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.sealed import KekPrivateKey
from securetrain.localstack import StackConfig, down, up
from securetrain.localstack.emulated_platform import EmulatedPlatform
from securetrain.localstack.ports import free_port_pair, free_ports
from securetrain.localstack.service import Service
from securetrain.localstack.services.vtpm import VTPM

if TYPE_CHECKING:
    from securetrain.core.contracts.training import JobKeys

#: The key URL the benchmarks' KEK is released under (what the sealed headers and outputs name).
KEK_ID = "https://vault.securetrain.bench/keys/kek/1"


def released_keys(key_size: int = 3072) -> JobKeys:
    """A KEK made in memory under :data:`KEK_ID`, as the TEE holds one once Key Vault released it."""
    # Imported here: the plain sides of benchmarks.trainer and benchmarks.streaming import this module, and their
    # peak RSS must not carry the TEE's contracts.
    from securetrain.core.contracts.training import JobKeys  # noqa: PLC0415

    return JobKeys.from_released(KekPrivateKey(rsa.generate_private_key(public_exponent=65537, key_size=key_size)),
                                 KEK_ID)  # fmt: skip


def private_pem(kek: KekPrivateKey) -> bytes:
    """``kek``'s private key as unencrypted PKCS#8 PEM: what a benchmark's child process reads on stdin, never
    from a file."""
    return kek.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@contextlib.contextmanager
def running_stack(services: Sequence[Service],
                  platform: EmulatedPlatform | None = None) -> Iterator[tuple[StackConfig, dict[str, str]]]:  # fmt: skip
    """``services`` of ``platform`` up in a temporary state directory, each on a free port (the vTPM on one whose
    next port is free too), with what the stack wrote to ``stack.env``; down again on leaving, the directory
    removed."""
    with tempfile.TemporaryDirectory(prefix="securetrain-bench-") as tmp:
        ports = dict(zip([service.name for service in services], free_ports(len(services)), strict=True))
        if VTPM.name in ports:
            ports[VTPM.name] = free_port_pair(set(ports.values()))
        config = StackConfig.resolve(Path(tmp), ports, services, platform)
        try:
            yield config, up(config)
        finally:
            down(config)
