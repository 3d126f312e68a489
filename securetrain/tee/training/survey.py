"""The survey of a streamed dataset: one pass over every shard (layouts, labels, the expectation suite, the
standardization's moments, the held-out sample), and its result as a frame for the workers of a group.

One process surveys before its first step; with several workers the launcher surveys once, in the agent's
process, and hands the result to every worker with its assignment, so that a worker decrypts only its lanes'
shards (docs/trainer.md, "Several workers in one TEE"). The frame is JSON and safetensors bytes; a worker
checks it against its spec before trusting a length in it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError
from safetensors import SafetensorError

from securetrain.core.contracts.training import TrainingCancelled, TrainingSpec
from securetrain.core.validation import StreamedValidation
from securetrain.tee.training.data import TrainingData
from securetrain.tee.training.frames import BrokenFrame
from securetrain.tee.training.loop import Standardization
from securetrain.tee.training.models import DataShape
from securetrain.tee.training.stream import ShardStream, StreamedDataset


@dataclass(frozen=True)
class Survey:
    """What the survey learned about the dataset, and the expectation suite's aggregates over it."""

    dataset: StreamedDataset
    aggregates: dict[str, Any]


def survey(spec: TrainingSpec, stream: ShardStream, cancel: threading.Event) -> Survey:
    """Read every shard of ``stream`` once; :class:`DataValidationFailed` when the suite fails, the content errors
    of :meth:`ShardStream.survey`, :class:`TrainingCancelled` when ``cancel`` was set meanwhile."""
    validation = StreamedValidation(spec.expectation_suite) if spec.expectation_suite is not None else None
    dataset = stream.survey(spec.hyperparameters.seed, validation.add if validation is not None else None)
    if cancel.is_set():
        raise TrainingCancelled("cancelled after the data was surveyed, before training")
    aggregates = validation.finish() if validation is not None else {"suite": None, "success": True, "rows": dataset.rows}
    return Survey(dataset, aggregates)


class _Fields(BaseModel):
    """The survey's JSON part, as the worker expects it (strict: no coercion of what the pipe carries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_rows: list[StrictInt]
    rows: StrictInt
    feature_names: list[StrictStr]
    feature_columns: list[StrictStr]
    feature_shape: list[StrictInt]
    classes: StrictInt
    aggregates: dict[str, Any]


_TENSORS = {"mean": torch.float32, "std": torch.float32, "held_out_features": torch.float32,
            "held_out_labels": torch.int64}  # fmt: skip


def survey_frame(found: Survey) -> tuple[dict[str, Any], bytes]:
    """(JSON message, safetensors bytes) carrying ``found``."""
    dataset = found.dataset
    fields = _Fields(
        train_rows=list(dataset.train_rows), rows=dataset.rows, feature_names=list(dataset.feature_names),
        feature_columns=list(dataset.held_out.feature_columns), feature_shape=list(dataset.shape.feature_shape),
        classes=dataset.shape.num_classes, aggregates=found.aggregates,
    )  # fmt: skip
    tensors = {"mean": dataset.stats.mean, "std": dataset.stats.std, "held_out_features": dataset.held_out.features,
               "held_out_labels": dataset.held_out.labels}  # fmt: skip
    data = safetensors.torch.save({name: tensor.contiguous() for name, tensor in tensors.items()})
    return {"survey": fields.model_dump(mode="json")}, data


def survey_of_frame(message: dict[str, Any], data: bytes, spec: TrainingSpec) -> Survey:
    """The survey a frame carries for ``spec``'s shards; :class:`BrokenFrame` if it is malformed or inconsistent."""
    try:
        fields = _Fields.model_validate(message.get("survey"))
    except ValidationError as exc:
        raise BrokenFrame(f"the survey handed over is malformed: {exc}") from None
    try:
        tensors = safetensors.torch.load(data)
    except SafetensorError as exc:
        raise BrokenFrame(f"the survey's tensors do not parse: {exc}") from None
    shape = tuple(fields.feature_shape)
    held = tensors.get("held_out_labels")
    count = int(held.shape[0]) if held is not None and held.dim() == 1 else -1
    expected = {"mean": shape, "std": shape, "held_out_features": (count, *shape), "held_out_labels": (count,)}
    problems = []
    if len(fields.train_rows) != len(spec.datasets):
        problems.append(f"{len(fields.train_rows)} shards' training rows for the spec's {len(spec.datasets)} shards")
    if any(rows < 0 for rows in fields.train_rows) or not 0 < sum(fields.train_rows) <= fields.rows:
        problems.append(f"training rows {fields.train_rows} do not fit the dataset's {fields.rows} rows")
    if not shape or any(size <= 0 for size in shape) or len(fields.feature_columns) != math.prod(shape):
        problems.append(f"feature shape {list(shape)} with {len(fields.feature_columns)} feature columns")
    if not fields.feature_names or fields.classes < 1:
        problems.append(f"{len(fields.feature_names)} feature names and {fields.classes} classes")
    if sorted(tensors) != sorted(_TENSORS):
        problems.append(f"tensors {sorted(tensors)}, not {sorted(_TENSORS)}")
    else:
        for name, dtype in _TENSORS.items():
            if tensors[name].dtype != dtype or tuple(tensors[name].shape) != expected[name]:
                problems.append(f"{name} is {tensors[name].dtype} {list(tensors[name].shape)}, not {dtype} "
                                f"{list(expected[name])}")  # fmt: skip
        if not problems and count > fields.rows - sum(fields.train_rows):
            problems.append(f"{count} held-out rows, more than the {fields.rows - sum(fields.train_rows)} held out")
        if not problems and count and not bool(((held >= 0) & (held < fields.classes)).all()):
            problems.append(f"held-out labels outside the {fields.classes} classes")
    if problems:
        raise BrokenFrame(f"the survey handed over is inconsistent: {'; '.join(problems)}")
    held_out = TrainingData(tensors["held_out_features"], tensors["held_out_labels"], tuple(fields.feature_names),
                            tuple(fields.feature_columns), spec.columns.label)  # fmt: skip
    dataset = StreamedDataset(
        tuple(spec.datasets), tuple(fields.train_rows), fields.rows, tuple(fields.feature_names),
        DataShape(shape, fields.classes), Standardization(tensors["mean"], tensors["std"]), held_out,
    )  # fmt: skip
    return Survey(dataset, fields.aggregates)
