"""What the tests of the stage operators and triggers share (their fixtures are in tests/stage_fixtures.py).

- :func:`task_context`: the part of an Airflow task context the stages read (the DAG's id, the run id, the
  task instance's XCom of the run's earlier stages, the DAG run's start);
- :func:`first_event`: what a trigger fires first, as the triggerer would run it;
- :class:`Stages`: the upstream stages of a run, run for real against the stack (environment, data check,
  training), for the tests of the stages that follow them.

Operators run as the task runner would call them (``execute``, ``execute_complete``), against the real local
stack; nothing of Azure's SDKs is replaced.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import types
import uuid
from collections.abc import Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from securetrain.airflow.data_security import DataSecurityCheckOperator
from securetrain.airflow.enclave import watch_job
from securetrain.airflow.environment import EnvironmentPreparationOperator
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.sensors import AttestationStatusSensor
from securetrain.airflow.training import AttestedTrainingOperator
from securetrain.core.onboarding import DatasetRef

DAG_ID = "secure_training"
#: A small job: one epoch of a small MLP on the breast-cancer shard.
MODEL = {"name": "mlp", "params": {"hidden": [8]}}
HYPERPARAMETERS = {"epochs": 1, "batch_size": 64, "learning_rate": 0.01, "seed": 7}
COLUMNS = {"label": "label"}


def new_run_id() -> str:
    """A DAG run id of its own for one test (blob names, jobs and audit logs derive from it)."""
    return f"manual__{uuid.uuid4().hex[:12]}"


class RunXComs:
    """The task instance in a context, as far as the stages use it: the return values of the run's stages."""

    def __init__(self, results: Mapping[str, Any]) -> None:
        self.results = dict(results)

    def xcom_pull(self, task_ids: str) -> Any:
        return self.results.get(task_ids)


def task_context(
    run_id: str, results: Mapping[str, Any] | None = None, *, dag_id: str = DAG_ID, started: datetime.datetime | None = None
) -> dict[str, Any]:
    """A minimal Airflow context of a task of the DAG run ``run_id`` (begun at ``started``, default now) whose
    earlier stages returned ``results``."""
    started = started or datetime.datetime.now(datetime.UTC)
    return {
        "dag": types.SimpleNamespace(dag_id=dag_id),
        "run_id": run_id,
        "ti": RunXComs(results or {}),
        "dag_run": types.SimpleNamespace(dag_id=dag_id, run_id=run_id, start_date=started),
    }


def first_event(trigger: BaseTrigger, timeout_s: float) -> TriggerEvent | None:
    """The first event ``trigger`` fires within ``timeout_s``, or None if it is still waiting then."""

    async def first() -> TriggerEvent | None:
        async for event in trigger.run():
            return event
        return None

    async def bounded() -> TriggerEvent | None:
        try:
            return await asyncio.wait_for(first(), timeout_s)
        except TimeoutError:
            return None

    return asyncio.run(bounded())


def job_end_state(job_id: str, timeout_s: float = 120) -> str:
    """The state the agent's job ``job_id`` ends in (succeeded, failed, cancelled), once it has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        watch = watch_job(ConfidentialVmHook(), job_id, expected_tee=None, max_attestation_age_s=3600)
        if watch.done or watch.job_state == "failed":  # a job failed for a security reason is no clean end
            return str(watch.job_state)
        assert watch.security_event is None, watch
        assert time.monotonic() < deadline, f"job {job_id} is still {watch.job_state} after {timeout_s} s"
        time.sleep(0.2)


def dataset_version(ref: DatasetRef) -> tuple[str, str]:
    """(dataset id, version) of the manifest ``ref`` names (``<dataset>/<version>/manifest.json``)."""
    dataset_id, version, _ = ref.manifest.split("/")
    return dataset_id, version


class Stages:
    """The stages of one DAG run up to training, each run as its operator, for real, against the stack; under the
    contract ``contract`` (a digest) when given, its datasets taking the place of ``dataset_ref``."""

    def __init__(self, dataset_ref: DatasetRef | None, run_id: str | None = None, *, contract: str | None = None) -> None:
        self.dataset_ref = dataset_ref
        self.contract = contract
        self.run_id = run_id or new_run_id()
        self.results: dict[str, Any] = {}
        # The DAG run's start: the audit stage collects the services' logs from then on.
        self.started = datetime.datetime.now(datetime.UTC)

    def context(self) -> dict[str, Any]:
        return task_context(self.run_id, self.results, started=self.started)

    def prepare_environment(self) -> dict[str, Any]:
        operator = EnvironmentPreparationOperator(task_id="prepare_environment", contract=self.contract)
        self.results[operator.task_id] = operator.execute(self.context())
        return self.results[operator.task_id]

    def check_data_security(self) -> dict[str, Any]:
        environment = self.results["prepare_environment"]
        # Under a contract the form's dataset is not used: the contract's are checked.
        dataset_id, version = dataset_version(self.dataset_ref) if self.dataset_ref else ("breast-cancer", "latest")
        operator = DataSecurityCheckOperator(
            task_id="check_data_security", dataset_id=dataset_id, version=version, kek_id=environment["kek_id"],
            release_policy_sha256=environment["release_policy_sha256"], contract=environment.get("contract"),
        )  # fmt: skip
        self.results[operator.task_id] = operator.execute(self.context())
        return self.results[operator.task_id]

    def attestation_status(self) -> dict[str, Any]:
        operator = AttestationStatusSensor(task_id="attestation_status", kek_id=self.results["prepare_environment"]["kek_id"],
                                           contract=self.contract, deferrable=False, mode="poke")  # fmt: skip
        self.results[operator.task_id] = operator.execute(self.context())
        return self.results[operator.task_id]

    def training_operator(self, **overrides: Any) -> AttestedTrainingOperator:
        arguments: dict[str, Any] = {
            "task_id": "train", "kek_id": self.results["prepare_environment"]["kek_id"],
            "datasets": self.results["check_data_security"]["job_datasets"], "model": MODEL,
            "hyperparameters": HYPERPARAMETERS, "columns": COLUMNS, "poll_interval": 0.2, "contract": self.contract,
        }  # fmt: skip
        return AttestedTrainingOperator(**{**arguments, **overrides})

    def train(self) -> dict[str, Any]:
        """Training in the worker (not deferred), to its end."""
        self.results["train"] = self.training_operator(deferrable=False).execute(self.context())
        return self.results["train"]

    def through_training(self) -> dict[str, Any]:
        """Every stage up to and including training; the results by task id."""
        self.prepare_environment()
        self.check_data_security()
        self.attestation_status()
        self.train()
        return self.results
