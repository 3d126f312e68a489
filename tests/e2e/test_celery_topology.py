"""Airflow on Celery for real: the topology docker-compose.yaml runs (securetrain.localstack.topology), started as
local processes (PostgreSQL, Redis, API server, scheduler, dag-processor, triggerer, two Celery workers) against
the session's local stack; ``data_onboarding`` and then ``secure_training`` are triggered through the REST API
and run to success, each task on the worker of its queue.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from securetrain.localstack import StackLayout, data_owner
from securetrain.localstack.airflow_env import ADMIN_USER, read_admin_password
from securetrain.localstack.celery_deployment import CeleryDeployment
from securetrain.localstack.topology import DATA_OWNER_QUEUE, DEFAULT_QUEUE, workers
from tests.conftest import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARSE_TIMEOUT_S = 180
RUN_TIMEOUT_S = 480
FINISHED = {"success", "failed"}
#: The stages of secure_training every run goes through.
STAGES = {"prepare_environment", "check_data_security", "attestation_status", "train", "enclave_health",
          "register_model", "audit", "cleanup"}  # fmt: skip


@pytest.fixture
def deployment(local_stack: LocalStack, tmp_path: Path) -> Iterator[CeleryDeployment]:
    # The data owner's signing key goes to the data owner's worker alone.
    owner = data_owner.airflow_connection(StackLayout(local_stack.state_dir))
    with CeleryDeployment(local_stack.state_dir, tmp_path / "celery", data_owner_connection=owner) as running:
        yield running


class RestApi:
    """Airflow's REST API (v2) as the admin user."""

    def __init__(self, base_url: str, password: str) -> None:
        self.base_url = base_url
        token = requests.post(f"{base_url}/auth/token", json={"username": ADMIN_USER, "password": password}, timeout=30)
        token.raise_for_status()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.base_url}/api/v2/{path}", timeout=30, **kwargs)

    def run_to_the_end(self, dag_id: str, conf: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Wait for ``dag_id`` to be parsed, unpause it, trigger it with ``conf``; its finished run and task instances."""
        deadline = time.monotonic() + PARSE_TIMEOUT_S
        while self.call("GET", f"dags/{dag_id}").status_code != 200:
            assert time.monotonic() < deadline, f"the dag-processor did not parse {dag_id} within {PARSE_TIMEOUT_S} s"
            time.sleep(2)
        self.call("PATCH", f"dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        # With a logical date, as a scheduled run has one: data_onboarding's default version is made from it.
        logical_date = datetime.datetime.now(datetime.UTC).isoformat()
        triggered = self.call("POST", f"dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf})
        assert triggered.status_code == 200, triggered.text
        run_id = triggered.json()["dag_run_id"]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while (run := self.call("GET", f"dags/{dag_id}/dagRuns/{run_id}").json())["state"] not in FINISHED:
            assert time.monotonic() < deadline, f"{dag_id} run {run_id} still {run['state']} after {RUN_TIMEOUT_S} s"
            time.sleep(3)
        tasks = self.call("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        return run, tasks


def _ran_on(deployment: CeleryDeployment, worker: str, tasks: list[dict[str, Any]]) -> None:
    """Every one of ``tasks`` was executed by ``worker`` (its Celery log shows it executing the task instance's
    workload) and by no other worker."""
    logs = {c.name: deployment.log_file(c.name).read_text(errors="replace") for c in workers()}
    for task in tasks:
        executing = "Executing workload in Celery: "
        started = {name for name, text in logs.items()
                   if any(executing in line and f"ti=TaskInstanceDTO(id=UUID('{task['id']}')" in line for line in text.splitlines())}  # fmt: skip
        assert started == {worker}, f"{task['dag_id']}.{task['task_id']} was executed by {sorted(started)}, not {worker}"


def test_onboarding_then_training_run_to_success_on_the_celery_workers(deployment: CeleryDeployment, local_stack) -> None:
    api = RestApi(deployment.api_url, read_admin_password(local_stack.state_dir))
    run, tasks = api.run_to_the_end("data_onboarding", {})
    assert run["state"] == "success", [(task["task_id"], task["state"]) for task in tasks]
    assert {task["queue"] for task in tasks} == {DATA_OWNER_QUEUE}
    [component] = [c for c in workers() if DATA_OWNER_QUEUE in c.queues]
    _ran_on(deployment, component.name, tasks)

    # One epoch: what is tested here is where the tasks run, not the training (test_secure_training_dag.py).
    run, tasks = api.run_to_the_end("secure_training", {"epochs": 1})
    assert run["state"] == "success", [(task["task_id"], task["state"]) for task in tasks]
    assert {task["queue"] for task in tasks} == {DEFAULT_QUEUE}
    [component] = [c for c in workers() if DEFAULT_QUEUE in c.queues]
    ran = [task for task in tasks if task["state"] != "skipped"]  # the branches a run without a contract skips
    assert {task["task_id"] for task in ran} >= STAGES and {task["state"] for task in ran} == {"success"}
    _ran_on(deployment, component.name, ran)
