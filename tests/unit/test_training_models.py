"""The model registry: names, parameter checking, shapes, and where a model trains under autocast."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from securetrain.core.contracts.job_spec import Hyperparameters
from securetrain.tee.training.data import TrainingData
from securetrain.tee.training.loop import (
    Standardization, build_trainee, data_shape, mixed_precision, plain_training, split_rows,
)  # fmt: skip
from securetrain.tee.training.models import (
    MODELS,
    DataShape,
    ModelConfigurationError,
    RegisteredModel,
    build_model,
    register,
)


def test_the_registry_has_an_mlp_and_a_cnn() -> None:
    assert {"mlp", "cnn"} <= set(MODELS)


def test_an_mlp_maps_rows_to_class_logits() -> None:
    model = build_model("mlp", {"hidden": [8, 4], "dropout": 0.1}, DataShape((30,), 2))
    assert model(torch.randn(5, 30)).shape == (5, 2)


def test_a_cnn_maps_images_to_class_logits() -> None:
    model = build_model("cnn", {"channels": [4, 8], "hidden": 16}, DataShape((1, 8, 8), 10))
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_the_cnn_refuses_flat_features_saying_what_it_needs() -> None:
    with pytest.raises(ModelConfigurationError, match=r"channels x height x width.*got feature shape \[64\]"):
        build_model("cnn", {}, DataShape((64,), 10))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("transformer", {}, "unknown model 'transformer'; registered models: .*cnn.*mlp"),
        ("mlp", {"layers": 3}, "model 'mlp' does not take parameter 'layers'; it takes dropout, hidden"),
        ("mlp", {"hidden": "64"}, "parameter 'hidden': expected a list of positive integers"),
        ("mlp", {"hidden": [64, 0]}, "parameter 'hidden': expected a list of positive integers"),
        ("mlp", {"dropout": True}, "parameter 'dropout': expected float"),
        ("mlp", {"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ("cnn", {"hidden": 2.5}, "parameter 'hidden': expected int"),
    ],
)
def test_bad_model_parameters_are_refused_by_name(name, params, message) -> None:
    with pytest.raises(ModelConfigurationError, match=message):
        build_model(name, params, DataShape((1, 8, 8), 2))


def test_standardization_uses_the_fitted_statistics_and_survives_a_constant_feature() -> None:
    model = build_model("mlp", {}, DataShape((2,), 2))
    model.standardize.fit(torch.tensor([1.0, 5.0]), torch.tensor([2.0, 0.0]))
    assert torch.equal(model.standardize(torch.tensor([[3.0, 5.0]])), torch.tensor([[1.0, 0.0]]))


def test_adding_a_model_is_one_registered_class() -> None:
    @dataclass(frozen=True)
    class LinearParams:
        bias: int = 1

    @register("test_linear")
    class Linear(RegisteredModel):
        Params = LinearParams

        def __init__(self, params: LinearParams, data: DataShape) -> None:
            super().__init__(data)
            self.linear = torch.nn.Linear(data.feature_count, data.num_classes, bias=bool(params.bias))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(self.standardize(x))

    try:
        assert build_model("test_linear", {"bias": 0}, DataShape((3,), 2)).linear.bias is None
        with pytest.raises(ValueError, match="registered twice"):
            register("test_linear")(Linear)
    finally:
        del MODELS["test_linear"]


def test_the_cpu_trains_in_float32_though_the_model_and_the_training_allow_autocast() -> None:
    names = ("a", "b", "c")
    data = TrainingData(torch.randn(8, 3), torch.tensor([0, 1] * 4), names, names, "y")
    hyper = Hyperparameters(epochs=1, batch_size=4, learning_rate=0.1, seed=1)
    rows, cpu = split_rows(data.rows, hyper.seed)[0], torch.device("cpu")
    trainee = build_trainee("mlp", {}, hyper, data_shape(data), Standardization.of(data, rows), cpu)
    training = plain_training(trainee, data, rows, hyper, cpu)
    assert training.allows_autocast and type(trainee.model).allows_autocast
    assert not mixed_precision(cpu, trainee.model, training)  # bit-exact with plain PyTorch's float32 runs
