"""The model registry: a job spec names a model (``"mlp"``, ``"cnn"``) and gives its parameters.

Adding a model is one class::

    @register("my_model")
    class MyModel(RegisteredModel):
        Params = MyParams           # a frozen dataclass; its fields are the accepted parameters

        def __init__(self, params: MyParams, data: DataShape) -> None: ...

:func:`build_model` looks the name up, checks the job spec's free-form ``model.params`` against the
class's ``Params`` (unknown names and wrong types are refused, naming the parameter) and builds the
module for the data's shape. Every model standardizes its input with statistics of the training split,
kept as buffers, so the sealed model carries what it needs to be used on raw features.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, get_type_hints

import torch
from torch import nn

from securetrain.core.errors import ConfigurationError


class ModelConfigurationError(ConfigurationError):
    """The job spec names an unknown model, a parameter the model does not take, or a bad value."""


@dataclass(frozen=True)
class DataShape:
    """What a model builder needs to know about the data: one row's feature shape and the class count."""

    feature_shape: tuple[int, ...]
    num_classes: int

    @property
    def feature_count(self) -> int:
        return math.prod(self.feature_shape)


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, with the training split's statistics as buffers."""

    def __init__(self, feature_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_shape))
        self.register_buffer("std", torch.ones(feature_shape))

    def fit(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the statistics; a constant feature (std 0) is only centred, never divided by zero."""
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RegisteredModel(nn.Module):
    """Base of every registered model: ``Params`` says which parameters it takes, ``standardize`` comes first."""

    Params: ClassVar[type]
    #: Whether the model keeps its accuracy with its matrix products and convolutions in bfloat16, so that
    #: training on a GPU may run its forward pass under autocast (docs/trainer.md, "Devices"). A model that
    #: needs float32 throughout (a layer whose sums lose what matters in bfloat16's 8-bit mantissa) says False.
    allows_autocast: ClassVar[bool] = True
    standardize: Standardize

    def __init__(self, data: DataShape) -> None:
        super().__init__()
        self.standardize = Standardize(data.feature_shape)


_Model = TypeVar("_Model", bound=type[RegisteredModel])
MODELS: dict[str, type[RegisteredModel]] = {}


def register(name: str) -> Callable[[_Model], _Model]:
    """Class decorator: make the model available to job specs as ``model.name == name``."""

    def add(cls: _Model) -> _Model:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice ({MODELS[name].__name__} and {cls.__name__})")
        params = cls.Params
        if not (dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen):  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__name__}.Params must be a frozen dataclass")
        MODELS[name] = cls
        return cls

    return add


def _checked(name: str, field: str, value: Any, annotation: Any) -> Any:
    """``value`` as the type the parameter declares, or :class:`ModelConfigurationError`."""
    where = f"model {name!r} parameter {field!r}"
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation == tuple[int, ...]:
        if isinstance(value, (list, tuple)) and all(
            isinstance(item, int) and not isinstance(item, bool) and item > 0 for item in value
        ):
            return tuple(value)
        raise ModelConfigurationError(f"{where}: expected a list of positive integers, got {value!r}")
    raise ModelConfigurationError(f"{where}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def model_params(name: str, params: Mapping[str, Any]) -> Any:
    """The ``Params`` of model ``name`` from a job spec's ``model.params``; refuses unknown names and types."""
    if name not in MODELS:
        raise ModelConfigurationError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    params_type = MODELS[name].Params
    hints = get_type_hints(params_type)
    unknown = sorted(set(params) - set(hints))
    if unknown:
        raise ModelConfigurationError(
            f"model {name!r} does not take parameter {unknown[0]!r}; it takes {', '.join(sorted(hints)) or 'none'}"
        )
    values = {field: _checked(name, field, value, hints[field]) for field, value in params.items()}
    try:
        return params_type(**values)
    except ValueError as exc:
        raise ModelConfigurationError(f"model {name!r}: {exc}") from None


def build_model(name: str, params: Mapping[str, Any], data: DataShape) -> RegisteredModel:
    """Build registered model ``name`` for data of shape ``data`` (weights from the global torch RNG)."""
    checked = model_params(name, params)
    return MODELS[name](checked, data)  # type: ignore[call-arg]


@dataclass(frozen=True)
class MlpParams:
    """``hidden``: widths of the hidden layers; ``dropout``: dropout probability after each of them."""

    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("mlp")
class Mlp(RegisteredModel):
    """A multilayer perceptron for tabular data: standardize, then Linear-ReLU(-Dropout) layers."""

    Params = MlpParams

    def __init__(self, params: MlpParams, data: DataShape) -> None:
        super().__init__(data)
        layers: list[nn.Module] = [nn.Flatten()]
        width = data.feature_count
        for hidden in params.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if params.dropout:
                layers.append(nn.Dropout(params.dropout))
            width = hidden
        layers.append(nn.Linear(width, data.num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.standardize(x))


@dataclass(frozen=True)
class CnnParams:
    """``channels``: output channels of the two 3x3 convolutions; ``hidden``: the dense layer's width."""

    channels: tuple[int, ...] = (16, 32)
    hidden: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.channels) != 2:
            raise ValueError(f"channels must name two convolutions, got {list(self.channels)}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be positive, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("cnn")
class SmallCnn(RegisteredModel):
    """A small CNN for small images (C x H x W, e.g. the 1x8x8 digits): two convolutions, one pooling."""

    Params = CnnParams

    def __init__(self, params: CnnParams, data: DataShape) -> None:
        if len(data.feature_shape) != 3 or data.feature_shape[1] < 2 or data.feature_shape[2] < 2:
            raise ModelConfigurationError(
                f"model 'cnn' needs images shaped channels x height x width (at least 2x2), got feature shape "
                f"{list(data.feature_shape)}; store the features as one tensor of shape [rows, C, H, W]"
            )
        super().__init__(data)
        channels, height, width = data.feature_shape
        first, second = params.channels
        self.features = nn.Sequential(
            nn.Conv2d(channels, first, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(first, second, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(second * (height // 2) * (width // 2), params.hidden),
            nn.ReLU(),
            nn.Dropout(params.dropout),
            nn.Linear(params.hidden, data.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.standardize(x)))
