"""What each stage of the training workflow returns (its XCom), by task id, and how a reader gets it back.

Each stage returns its :mod:`securetrain.core.contracts.stages` model as JSON; the audit stage and the
"Secure training" page read a stored value back with :func:`read_result`, which validates it against its
stage's model. This module imports nothing but the contracts, so the page's process stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from securetrain.core.contracts.stages import (
    AttestationResult,
    AuditResult,
    CleanupResult,
    DataCheckResult,
    EnvironmentResult,
    RegistrationResult,
    TrainingStageResult,
)

#: Task id -> the model of what it returns (the task ids of ``securetrain.airflow.pipeline``).
RESULTS: Mapping[str, type[BaseModel]] = {
    "prepare_environment": EnvironmentResult,
    "check_data_security": DataCheckResult,
    "attestation_status": AttestationResult,
    "train": TrainingStageResult,
    "register_model": RegistrationResult,
    "audit": AuditResult,
    "cleanup": CleanupResult,
}


def read_result(task_id: str, value: Any) -> BaseModel:
    """The return value of ``task_id`` (decoded JSON) as its stage's model; pydantic's ValidationError if not."""
    return RESULTS[task_id].model_validate(value)
