"""The stack's GPU option: chosen like the platform, recorded while the stack runs, and the one source of the TEE's
GPU settings, of the measured requirement and of the attestation stand-in's GPU trust."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securetrain.core.nvidia.reference import ReferenceMeasurements
from securetrain.localstack.errors import StackConfigurationError
from securetrain.localstack.layout import StackLayout
from securetrain.localstack.platform.simulated_gpu import SimulatedH100
from securetrain.localstack.stack_gpu import (
    GPU_ENV,
    StackGpu,
    chosen_gpu,
    gpu_configuration,
    gpu_dir,
    gpu_service_arguments,
    gpu_tee_environment,
    write_requirement,
)
from securetrain.localstack.standins.attestation_service.gpu_attestation import trusted_gpu_root

URL = "https://127.0.0.1:10300"


@pytest.fixture
def layout(tmp_path: Path) -> StackLayout:
    layout = StackLayout(tmp_path / "state")
    layout.create()
    return layout


def test_without_a_gpu_nothing_changes(layout: StackLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GPU_ENV, raising=False)
    assert chosen_gpu(layout, None) is StackGpu.NONE
    write_requirement(layout, StackGpu.NONE, URL)
    assert gpu_configuration(layout) is None and gpu_tee_environment(layout) == {}
    assert gpu_service_arguments(layout, layout.data_dir("attestation")) == []


def test_a_simulated_gpu_is_required_measured_and_trusted(layout: StackLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GPU_ENV, raising=False)
    write_requirement(layout, StackGpu.SIMULATED, URL)
    # An up without a choice keeps the running stack's GPU; the option and the variable win over it.
    assert chosen_gpu(layout, None) is StackGpu.SIMULATED
    assert chosen_gpu(layout, StackGpu.NONE) is StackGpu.NONE
    assert gpu_configuration(layout) == {"provider": "simulated", "attestation_endpoint": URL, "token_issuer": URL,
                                         "token_jwks": f"{URL}/.well-known/jwks.json", "require_measurements": True}  # fmt: skip
    environment = gpu_tee_environment(layout)
    assert environment["SECURETRAIN_GPU"] == "simulated" and environment["SECURETRAIN_GPU_DIR"] == str(gpu_dir(layout))
    data_dir = layout.data_dir("attestation")
    data_dir.mkdir(parents=True)
    arguments = gpu_service_arguments(layout, data_dir)
    root, reference = Path(arguments[1]), Path(arguments[3])
    gpu = SimulatedH100.load_or_create(gpu_dir(layout))
    assert trusted_gpu_root(root).spki_sha256 == gpu.root.spki_sha256
    golden = ReferenceMeasurements.from_dict(json.loads(reference.read_text()))
    golden.check({block.index: block.value for block in gpu.measurements()})
    write_requirement(layout, StackGpu.NONE, URL)
    assert gpu_configuration(layout) is None


def test_a_gpu_needs_the_attestation_service_and_a_known_name(layout: StackLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StackConfigurationError, match="attestation service"):
        write_requirement(layout, StackGpu.SIMULATED, None)
    monkeypatch.setenv(GPU_ENV, "h200")
    with pytest.raises(StackConfigurationError, match="none, simulated"):
        chosen_gpu(layout, None)
