"""A stack whose CVM has the simulated H100 (``stack up --gpu simulated``), for the modules that need one.

A module takes it as its ``local_stack`` (``local_stack = gpu_stack.local_stack``), so the fixtures of
tests/conftest.py that build on ``local_stack`` (``store``, ``shard``, ``dataset_ref``) seal and publish on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from securetrain.localstack import down, read_stack_env, up
from securetrain.localstack.stack_gpu import StackGpu
from tests.conftest import LocalStack, _config_with_free_ports


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack whose CVM has the simulated H100, up for the module."""
    config = dataclasses.replace(_config_with_free_ports(tmp_path_factory.mktemp("gpu-stack")), gpu=StackGpu.SIMULATED)
    try:
        up(config)
        yield LocalStack(config, read_stack_env(config.layout.env_file))
    finally:
        down(config)
