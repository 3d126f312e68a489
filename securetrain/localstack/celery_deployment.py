"""The Airflow topology of :mod:`securetrain.localstack.topology` started as local processes: Airflow on Celery for real.

A throwaway PostgreSQL cluster (Debian's ``postgresql``: ``initdb`` into a temporary directory, the server on a
free loopback port with a password) and Redis (Debian's ``redis-server``, loopback, with a password) stand where
docker-compose.yaml has its ``postgres`` and ``redis`` containers; ``airflow db migrate`` where it has
``airflow-init``; then every component of the topology, each with the compose service's command, the settings
the topology says all share and one freshly generated value per deployment setting. The rest of what Airflow
reaches (storage, Key Vault, attestation, the trainer) is the local stack's, through the local Airflow
environment (:mod:`securetrain.localstack.airflow_env`), as in every other end-to-end test.

Each process writes to its own log in the work directory; a component that exits or does not become healthy
raises :class:`~securetrain.localstack.errors.ServiceStartFailed` naming it and its log. :meth:`CeleryDeployment.stop`
stops everything it started, newest first, and deletes the database cluster.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import redis
import requests
from cryptography.fernet import Fernet

from securetrain.localstack.airflow_env import airflow_executable, process_environment
from securetrain.localstack.errors import ServiceStartFailed, ToolNotInstalled
from securetrain.localstack.layout import write_file
from securetrain.localstack.ports import free_ports
from securetrain.localstack.process import ProcessIdentity, start_process, stop_process
from securetrain.localstack.topology import COMPONENTS, MIGRATE_COMMAND, SHARED_SETTINGS, Component

log = logging.getLogger(__name__)

#: The database and its owner, as docker-compose.yaml's ``postgres`` service makes them.
DATABASE = "airflow"
#: Who runs PostgreSQL when this process is root (the server refuses root): Debian's package makes this user.
POSTGRES_SYSTEM_USER = "postgres"
#: Where Debian's ``postgresql`` package puts the server's programs (one directory per major version).
DEBIAN_POSTGRES_BINARIES = Path("/usr/lib/postgresql")

#: How long the database, the broker, the migration and the components each get to become ready (2-core machines).
START_TIMEOUT_S = 180.0
#: How long a component gets to stop after SIGTERM (a worker finishes its running tasks first).
STOP_GRACE_S = 30.0
_POLL_S = 1.0
_PASSWORD_BYTES = 24


def postgres_bin_dir() -> Path:
    """The directory of ``initdb`` and ``postgres``: Debian's newest installed major version, else ``initdb`` on PATH.

    Raises:
        ToolNotInstalled: PostgreSQL's server is not installed.
    """
    versions = sorted((path for path in DEBIAN_POSTGRES_BINARIES.glob("*/bin/postgres") if path.parts[-3].isdigit()),
                      key=lambda path: int(path.parts[-3]), reverse=True)  # fmt: skip
    if versions:
        return versions[0].parent
    initdb = shutil.which("initdb")
    if initdb is not None and (Path(initdb).resolve().parent / "postgres").is_file():
        return Path(initdb).resolve().parent
    raise ToolNotInstalled("PostgreSQL's server is not installed: run `make setup` (Debian's postgresql package)")


def redis_server() -> Path:
    """The ``redis-server`` program.

    Raises:
        ToolNotInstalled: it is not installed.
    """
    program = shutil.which("redis-server")
    if program is None:
        raise ToolNotInstalled("redis-server is not installed: run `make setup` (Debian's redis-server package)")
    return Path(program)


@dataclass(frozen=True)
class DeploymentPorts:
    """The loopback ports of one deployment, all free when it was made."""

    postgres: int
    redis: int
    api: int
    scheduler_health: int
    trigger_log_server: int
    #: One per worker, by component name: each serves its tasks' logs to the API server.
    worker_log_servers: Mapping[str, int]

    @classmethod
    def free(cls, workers: list[str]) -> DeploymentPorts:
        postgres, redis_port, api, scheduler_health, trigger_log, *worker_ports = free_ports(5 + len(workers))
        return cls(postgres, redis_port, api, scheduler_health, trigger_log, dict(zip(workers, worker_ports, strict=True)))


class CeleryDeployment:
    """Airflow's Celery topology on this machine, wired to the local stack in ``state_dir``.

    ``work_dir`` receives each process's log (``<name>.log``), ``AIRFLOW_HOME`` and Redis's configuration.
    ``data_owner_connection`` holds the ``AIRFLOW_CONN_*`` variable of the data owner's signing key, given to the
    data owner's worker alone (:func:`securetrain.localstack.data_owner.airflow_connection`). Use it as a context
    manager (started on entry, stopped on exit), or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, state_dir: Path, work_dir: Path, *, data_owner_connection: Mapping[str, str]) -> None:
        self.state_dir = state_dir.resolve()
        self.work_dir = work_dir.resolve()
        self._data_owner_connection = dict(data_owner_connection)
        self.ports = DeploymentPorts.free([c.name for c in COMPONENTS if c.is_worker])
        self._postgres_password = secrets.token_hex(_PASSWORD_BYTES)
        self._redis_password = secrets.token_hex(_PASSWORD_BYTES)
        self._fernet_key = Fernet.generate_key().decode()
        self._jwt_secret = secrets.token_hex(32)
        self._api_secret_key = secrets.token_hex(32)
        self._processes: list[tuple[str, ProcessIdentity]] = []
        self._cluster_dir: Path | None = None

    @property
    def api_url(self) -> str:
        """The API server's base URL (UI, REST API, execution API)."""
        return f"http://127.0.0.1:{self.ports.api}"

    def log_file(self, name: str) -> Path:
        """The log of the process ``name`` (a component's name, ``postgres``, ``redis`` or ``airflow-init``)."""
        return self.work_dir / f"{name}.log"

    def __enter__(self) -> CeleryDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the database, the broker, migrate, then every component; return once all are healthy.

        Raises:
            ToolNotInstalled: PostgreSQL or Redis is not installed.
            ServiceStartFailed: a process exited or did not become ready in time (the message names its log).
        """
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._start_postgres()
        self._start_redis()
        self._migrate()
        for component in COMPONENTS:
            self._start(component.name, [str(airflow_executable()), *self.local_command(component)],
                        self.component_environment(component))  # fmt: skip
        self._wait_for_api_health()
        for component in COMPONENTS:
            if component.is_worker:
                self._wait_for_worker(component)

    def stop(self) -> None:
        """Stop the Airflow components (together: each takes seconds to wind down), then Redis and PostgreSQL,
        then delete the database cluster."""
        components = {component.name for component in COMPONENTS}
        airflow = [(name, identity) for name, identity in self._processes if name in components]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(components)) as pool:
            for stopped in [pool.submit(self._stop, name, identity) for name, identity in airflow]:
                stopped.result()
        self._processes = [entry for entry in self._processes if entry[0] not in components]
        while self._processes:
            self._stop(*self._processes.pop())
        if self._cluster_dir is not None:
            shutil.rmtree(self._cluster_dir, ignore_errors=True)
            self._cluster_dir = None

    def _stop(self, name: str, identity: ProcessIdentity) -> None:
        log.info("stopping %s", name)
        stop_process(identity, grace_s=STOP_GRACE_S)

    # The environment and commands of the components.

    def celery_node(self, component: Component) -> str:
        """The Celery node name of worker ``component`` (unique on this host, unlike Celery's default)."""
        return f"{component.name}@127.0.0.1"

    def local_command(self, component: Component) -> list[str]:
        """``component``'s command, plus (for a worker) the node name that tells two workers on one host apart."""
        command = list(component.command)
        if component.is_worker:
            command += ["--celery-hostname", self.celery_node(component)]
        return command

    def deployment_settings(self) -> dict[str, str]:
        """The values of :data:`~securetrain.localstack.topology.DEPLOYMENT_SETTINGS` for this deployment."""
        database = f"{DATABASE}:{self._postgres_password}@127.0.0.1:{self.ports.postgres}/{DATABASE}"
        return {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{database}",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{self._redis_password}@127.0.0.1:{self.ports.redis}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{database}",
            "AIRFLOW__CORE__FERNET_KEY": self._fernet_key,
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
            "AIRFLOW__API__SECRET_KEY": self._api_secret_key,
        }

    def component_environment(self, component: Component | None = None) -> dict[str, str]:
        """The environment of ``component`` (of ``airflow db migrate`` when None): the local Airflow environment,
        the topology's shared settings, this deployment's settings, and the component's own ports."""
        overrides = {
            **SHARED_SETTINGS,
            **self.deployment_settings(),
            "AIRFLOW_HOME": str(self.work_dir / "airflow-home"),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self.ports.scheduler_health),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports.trigger_log_server),
        }
        if component is not None and component.is_worker:
            overrides["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(self.ports.worker_log_servers[component.name])
        if component is not None and component.data_owner:
            overrides.update(self._data_owner_connection)
        return process_environment(self.state_dir, api_port=self.ports.api, overrides=overrides)

    # Starting and waiting.

    def _start(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path | None = None) -> None:
        log.info("starting %s (log: %s)", name, self.log_file(name))
        self._processes.append((name, start_process(argv, env, self.log_file(name), cwd or self.work_dir)))

    def _failed(self, name: str, why: str) -> ServiceStartFailed:
        tail = "\n".join(self.log_file(name).read_text(errors="replace").splitlines()[-30:]) if self.log_file(name).exists() else ""
        return ServiceStartFailed(f"{name} {why}; its log is {self.log_file(name)}:\n{tail}")

    def _wait(self, waiting_on: Callable[[], list[str]], watch: list[str]) -> None:
        """Poll ``waiting_on`` (the processes not ready yet) until it is empty; fail naming the process that
        exited (of ``watch``) or, when time runs out, those still not ready."""
        deadline = time.monotonic() + START_TIMEOUT_S
        watched = [(name, identity) for name, identity in self._processes if name in watch]
        while True:
            for name, identity in watched:
                if not identity.is_running():
                    raise self._failed(name, "exited during start-up")
            laggards = waiting_on()
            if not laggards:
                return
            if time.monotonic() >= deadline:
                raise self._failed(laggards[0], f"did not become ready within {START_TIMEOUT_S:.0f} s"
                                   + (f" (nor did {', '.join(laggards[1:])})" if laggards[1:] else ""))  # fmt: skip
            time.sleep(_POLL_S)

    def _start_postgres(self) -> None:
        bin_dir = postgres_bin_dir()
        owner = pwd.getpwnam(POSTGRES_SYSTEM_USER) if os.geteuid() == 0 else None
        # Not under work_dir: the server's user must be able to reach the directory, and pytest's are 0700 root's.
        self._cluster_dir = Path(tempfile.mkdtemp(prefix="securetrain-postgres-"))
        password_file = self._cluster_dir / "password"
        write_file(password_file, self._postgres_password.encode(), mode=0o600)
        if owner is not None:
            for path in (self._cluster_dir, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        # PostgreSQL refuses to run as root: as root, run it as the system user (setpriv execs, so the process
        # stopped is the server itself).
        as_owner = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups", "--"] if owner else []
        data_dir = self._cluster_dir / "data"
        initdb = subprocess.run(
            [*as_owner, str(bin_dir / "initdb"), "--pgdata", str(data_dir), "--username", DATABASE,
             "--pwfile", str(password_file), "--auth", "scram-sha-256", "--encoding", "UTF8", "--no-instructions"],
            capture_output=True, text=True, check=False, cwd=self._cluster_dir, timeout=START_TIMEOUT_S,
        )  # fmt: skip
        self.log_file("postgres").write_text(initdb.stdout + initdb.stderr)
        if initdb.returncode != 0:
            raise self._failed("postgres", f"initdb failed (exit {initdb.returncode})")
        # Loopback TCP only, no Unix socket: nothing on the machine but this deployment is meant to reach it.
        self._start("postgres", [*as_owner, str(bin_dir / "postgres"), "-D", str(data_dir),
                                 "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.ports.postgres}",
                                 "-c", "unix_socket_directories="], os.environ, cwd=self._cluster_dir)  # fmt: skip

        def waiting_on() -> list[str]:
            try:
                with contextlib.closing(self._connect("postgres")):
                    return []
            except psycopg2.OperationalError:
                return ["postgres"]

        self._wait(waiting_on, watch=["postgres"])
        with contextlib.closing(self._connect("postgres")) as connection:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DATABASE}")

    def _connect(self, database: str) -> psycopg2.extensions.connection:
        return psycopg2.connect(host="127.0.0.1", port=self.ports.postgres, user=DATABASE,
                                password=self._postgres_password, dbname=database, connect_timeout=5)  # fmt: skip

    def _start_redis(self) -> None:
        # The password in a 0600 file, not on the command line that `ps` shows.
        config = self.work_dir / "redis.conf"
        write_file(config, (f"bind 127.0.0.1\nport {self.ports.redis}\nrequirepass {self._redis_password}\n"
                            f"dir \"{self.work_dir}\"\nsave \"\"\nappendonly no\n").encode(), mode=0o600)  # fmt: skip
        self._start("redis", [str(redis_server()), str(config)], os.environ)

        def waiting_on() -> list[str]:
            client = redis.Redis(host="127.0.0.1", port=self.ports.redis, password=self._redis_password, socket_timeout=5)
            try:
                return [] if client.ping() else ["redis"]
            except redis.RedisError:
                return ["redis"]
            finally:
                client.close()

        self._wait(waiting_on, watch=["redis"])

    def _migrate(self) -> None:
        name = "airflow-init"
        argv = [str(airflow_executable()), *MIGRATE_COMMAND]
        with self.log_file(name).open("ab") as output:
            result = subprocess.run(argv, env=self.component_environment(), stdout=output, stderr=subprocess.STDOUT,
                                    cwd=self.work_dir, timeout=START_TIMEOUT_S * 2, check=False)  # fmt: skip
        if result.returncode != 0:
            raise self._failed(name, f"(`airflow {' '.join(MIGRATE_COMMAND)}`) failed with exit {result.returncode}")

    def _wait_for_api_health(self) -> None:
        """Wait for the API server, then until it reports the scheduler, triggerer and dag-processor healthy
        (each heartbeats into the metadata database)."""
        # What the health answer calls each part, and the process behind it.
        parts = {"metadatabase": "postgres", "scheduler": "airflow-scheduler", "triggerer": "airflow-triggerer",
                 "dag_processor": "airflow-dag-processor"}  # fmt: skip

        def waiting_on() -> list[str]:
            try:
                health = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
            except (requests.RequestException, ValueError):
                return ["airflow-apiserver"]
            return [process for part, process in parts.items() if (health.get(part) or {}).get("status") != "healthy"]

        self._wait(waiting_on, watch=["postgres", "redis", *(c.name for c in COMPONENTS if not c.is_worker)])

    def _wait_for_worker(self, component: Component) -> None:
        """Wait until the worker answers a Celery ping through the broker (compose's health check)."""
        argv = [str(Path(airflow_executable()).parent / "celery"), "--app",
                "airflow.providers.celery.executors.celery_executor.app", "inspect", "ping",
                "--timeout", "5", "--destination", self.celery_node(component)]  # fmt: skip
        environment = self.component_environment()

        def waiting_on() -> list[str]:
            result = subprocess.run(argv, env=environment, capture_output=True, text=True, check=False,
                                    cwd=self.work_dir, timeout=120)  # fmt: skip
            return [] if result.returncode == 0 else [component.name]

        self._wait(waiting_on, watch=[component.name])

