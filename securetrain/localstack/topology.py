"""The Airflow deployment's topology, described once: which components run, with which ``airflow`` command, on
which Celery queues, and the settings they all share.

Two places run it: ``docker-compose.yaml`` (one container per component; tests/unit/test_docker_compose.py
checks that its Airflow services are exactly these, with these commands and settings) and
:mod:`securetrain.localstack.celery_deployment`, which starts it as local processes for the end-to-end test
(tests/e2e/test_celery_topology.py). docs/deployment.md ("The Airflow topology") describes it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Airflow's executor in this topology: tasks go through the Redis broker to Celery workers.
EXECUTOR = "CeleryExecutor"

#: The queue every task without one of its own goes to (Airflow's ``[operators] default_queue``).
DEFAULT_QUEUE = "default"
#: data_onboarding's queue: its tasks hold plaintext, so they run in the data owner's zone
#: (``securetrain.airflow.onboarding.DATA_OWNER_QUEUE``; a unit test holds the two equal).
DATA_OWNER_QUEUE = "data-owner"
#: key_rotation's queue: its tasks hold the identity that makes new KEK versions (dags/key_rotation.py).
KEY_ROTATOR_QUEUE = "key-rotator"

#: Tasks each Celery worker runs at once (``[celery] worker_concurrency``). A task of this project mostly waits
#: on the TEE or on storage, so the bound is memory (one task process each), not the CPUs.
WORKER_CONCURRENCY = 8


@dataclass(frozen=True)
class Component:
    """One long-running Airflow process of the deployment.

    ``name`` is its compose service; ``command`` the ``airflow`` sub-command it runs (the compose service's
    ``command``; the Airflow image's entry point puts ``airflow`` in front); ``queues`` the Celery queues a
    worker consumes (empty for the others); ``data_owner`` marks the worker in the data owner's zone, the one
    process given the data owner's signing key.
    """

    name: str
    command: tuple[str, ...]
    queues: tuple[str, ...] = ()
    data_owner: bool = False

    @property
    def is_worker(self) -> bool:
        return bool(self.queues)


def _worker(name: str, *queues: str, data_owner: bool = False) -> Component:
    return Component(name, ("celery", "worker", "--queues", ",".join(queues)), queues, data_owner)


#: Every component, in the order the local launcher starts them (the API server first: the others report to
#: its execution API).
COMPONENTS: tuple[Component, ...] = (
    Component("airflow-apiserver", ("api-server",)),
    Component("airflow-scheduler", ("scheduler",)),
    Component("airflow-dag-processor", ("dag-processor",)),
    Component("airflow-triggerer", ("triggerer",)),
    # The pipeline's shared worker. key-rotator belongs on a host of its own in production (docs/deployment.md).
    _worker("airflow-worker", DEFAULT_QUEUE, KEY_ROTATOR_QUEUE),
    # In the data owner's environment: the only worker holding the owner's signing key (and plaintext).
    _worker("airflow-worker-data-owner", DATA_OWNER_QUEUE, data_owner=True),
)

#: The one-shot component that migrates the metadata database before the others start.
MIGRATE_COMMAND = ("db", "migrate")

#: Settings with the same value in every component, wherever the topology runs.
SHARED_SETTINGS: dict[str, str] = {
    "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    # A DAG runs only once someone unpaused it: a new DAG file is not a decision to run it.
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": DEFAULT_QUEUE,
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "true",
}

#: Settings every component must have with one value per deployment (a secret, or the address of Postgres or
#: Redis): the deployment supplies them; components that disagree on one cannot work together.
DEPLOYMENT_SETTINGS: tuple[str, ...] = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
)


def component(name: str) -> Component:
    """The component called ``name``."""
    for candidate in COMPONENTS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"the topology has no component {name!r}; it has {[c.name for c in COMPONENTS]}")


def workers() -> tuple[Component, ...]:
    """The Celery workers."""
    return tuple(candidate for candidate in COMPONENTS if candidate.is_worker)
