"""Where a run's things live in storage, and the run id the trainer knows it by: one naming for every stage."""

from __future__ import annotations

import hashlib
import re

from securetrain.core.model_registry import REGISTRY_CONTAINER

DATASETS_CONTAINER = "datasets"
CHECKPOINTS_CONTAINER = "checkpoints"
MODELS_CONTAINER = "models"
REPORTS_CONTAINER = "reports"
#: Every container the pipeline uses; environment preparation makes them (private).
CONTAINERS = (DATASETS_CONTAINER, CHECKPOINTS_CONTAINER, MODELS_CONTAINER, REGISTRY_CONTAINER, REPORTS_CONTAINER)


def job_run_id(dag_id: str, run_id: str) -> str:
    """The trainer's run id for an Airflow DAG run: stable across task retries (so a resubmit finds the job).

    Airflow run ids may hold characters blob names and the job schema do not take; those become ``-``,
    and a digest of the original keeps two runs that differ only there apart.
    """
    original = f"{dag_id}.{run_id}"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", original).strip("-.")[:180]
    return f"{readable}.{hashlib.sha256(original.encode()).hexdigest()[:12]}"


def checkpoint_prefix(job_run: str) -> str:
    return f"{job_run}/"


def model_output_blob(job_run: str) -> str:
    return f"{job_run}/model.sealed"
