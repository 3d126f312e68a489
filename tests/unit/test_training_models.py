"""The model registry: names, parameter checking, shapes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

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
