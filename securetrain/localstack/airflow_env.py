"""The local Airflow environment: one Airflow installation per state directory, wired to the local stack.

Airflow reads its configuration from ``AIRFLOW__SECTION__KEY`` variables and its connections from
``AIRFLOW_CONN_<ID>`` variables, so the whole environment is a mapping of variables (:func:`airflow_environment`)
that every Airflow command of this project runs with; docs/airflow.md ("What the environment sets") lists it and
says why connections are variables. Airflow is the zone trusted least: of ``stack.env`` it gets only the settings
it uses (:data:`AIRFLOW_STACK_SETTINGS`), never the TEE's identity, the simulated platform's keys or the data
owner's material (docs/keys.md, "Where each identity lives").
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from securetrain.core.errors import ConfigurationError, SecuretrainError
from securetrain.localstack import StackLayout, read_stack_env
from securetrain.localstack.identities import PIPELINE_IDENTITY, ROTATOR_IDENTITY, LocalIdentity
from securetrain.localstack.layout import repo_root, write_file
from securetrain.localstack.services.identity import stack_identities
from securetrain.localstack.services.keyvault import roles_path

log = logging.getLogger(__name__)

#: The UI user SimpleAuthManager knows, and its role.
ADMIN_USER = "admin"
#: Where the API server (UI, REST API, execution API, the Secure training page) listens by default.
DEFAULT_API_PORT = 8080
#: The environment variable that changes that port (the ``--port`` option wins over it).
API_PORT_ENV = "SECURETRAIN_AIRFLOW_PORT"

#: What of ``stack.env`` Airflow's environment carries: the storage connection, and the approved release
#: policy and the logs the audit and access review read (:class:`securetrain.airflow.settings.PipelineSettings`).
#: Anything else stays out: a new setting Airflow needs is added here deliberately.
AIRFLOW_STACK_SETTINGS = (
    "AIRFLOW_CONN_SECURETRAIN_STORAGE",
    "SECURETRAIN_ATTESTATION_LOG",
    "SECURETRAIN_KEYVAULT_ACCESS_LOG",
    "SECURETRAIN_RELEASE_POLICY",
)

_SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
_PASSWORD_BYTES = 24


class AirflowEnvironmentError(ConfigurationError):
    """The local Airflow environment cannot be set up: stack.env lacks a setting, or Airflow is missing."""


class AirflowCommandFailed(SecuretrainError):
    """An ``airflow`` command this module ran exited with an error."""


def airflow_home(state_dir: Path) -> Path:
    """``AIRFLOW_HOME`` of the state directory ``state_dir``."""
    return state_dir / "airflow"


def metadata_database(state_dir: Path) -> Path:
    """The SQLite metadata database of the state directory ``state_dir``."""
    return airflow_home(state_dir) / "airflow.db"


def admin_password_file(state_dir: Path) -> Path:
    """The JSON file ``{"admin": "<password>"}`` that SimpleAuthManager checks UI logins against."""
    return StackLayout(state_dir).secrets_dir / "airflow-passwords.json"


def read_admin_password(state_dir: Path) -> str:
    """The admin user's password (made by :func:`airflow_environment`)."""
    path = admin_password_file(state_dir)
    try:
        return json.loads(path.read_text())[ADMIN_USER]
    except FileNotFoundError:
        raise AirflowEnvironmentError(
            f"{path} does not exist: run `securetrain airflow env` (or standalone) to create it"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise AirflowEnvironmentError(
            f"{path} is not a SimpleAuthManager passwords file with user {ADMIN_USER!r} ({exc!r}): "
            "delete it and a new password is generated"
        ) from None


def _ensure_admin_password(state_dir: Path) -> None:
    """Generate the admin password once. Airflow would generate one too, but it prints it into the
    api-server's log; made here, it exists only in this 0600 file."""
    path = admin_password_file(state_dir)
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise AirflowEnvironmentError(f"{path} is readable by other users: chmod 600 it (it holds a password)")
        read_admin_password(state_dir)  # fails on a malformed file now rather than at the first login
        return
    write_file(path, json.dumps({ADMIN_USER: secrets.token_urlsafe(_PASSWORD_BYTES)}).encode(), mode=0o600)
    log.info("generated the Airflow admin password in %s", path)


def keyvault_connections(
    vault_url: str, authority_host: str, ca_bundle: str, identities: Mapping[str, LocalIdentity]
) -> dict[str, dict[str, object]]:
    """Airflow's two Key Vault connections (id -> connection), the pipeline's and key rotation's service principals
    (docs/keys.md, "Roles") as the Azure provider's connections carry one: login, password, extra ``tenant_id``,
    with the identity stand-in as ``authority_host``."""

    def connection(identity: str) -> dict[str, object]:
        application = identities[identity]
        return {
            "conn_type": "securetrain_keyvault",
            "host": vault_url,
            "login": application.client_id,
            "password": application.client_secret,
            "extra": {"ca_bundle": ca_bundle, "tenant_id": application.tenant_id, "authority_host": authority_host,
                      "disable_instance_discovery": True},  # fmt: skip
        }

    return {"securetrain_keyvault": connection(PIPELINE_IDENTITY),
            "securetrain_keyvault_rotator": connection(ROTATOR_IDENTITY)}  # fmt: skip


def securetrain_connections(stack_env: Mapping[str, str], env_file: Path) -> dict[str, str]:
    """The ``AIRFLOW_CONN_*`` variables of the securetrain hooks, in Airflow's JSON form, from ``stack.env``.

    ``securetrain_storage`` (type ``wasb``) is already in ``stack.env``; the others are built here. Each
    names the stack CA as ``ca_bundle``: the hooks pass it to their clients explicitly and never trust it
    process-wide.
    """

    def setting(name: str) -> str:
        try:
            return stack_env[name]
        except KeyError:
            raise AirflowEnvironmentError(
                f"{env_file} has no {name}: run `securetrain stack up` to bring every service up and rewrite it"
            ) from None

    ca_bundle = setting("SECURETRAIN_CA_BUNDLE")
    connections = {
        **keyvault_connections(setting("SECURETRAIN_KEYVAULT_URL"), setting("SECURETRAIN_IDENTITY_ENDPOINT"), ca_bundle,
                               stack_identities(StackLayout(env_file.parent))),  # fmt: skip
        "securetrain_attestation": {
            "conn_type": "securetrain_attestation",
            "host": setting("SECURETRAIN_ATTESTATION_ENDPOINT"),
            "extra": {"ca_bundle": ca_bundle},
        },
        "securetrain_cvm": {
            "conn_type": "securetrain_cvm",
            "host": setting("SECURETRAIN_CVM_ENDPOINT"),
            "extra": {
                "backend": "local",
                "ca_bundle": ca_bundle,
                "client_cert": setting("SECURETRAIN_CVM_PIPELINE_CERT"),
                "client_key": setting("SECURETRAIN_CVM_PIPELINE_KEY"),
            },
        },
    }
    variables = {
        f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(body, sort_keys=True) for conn_id, body in connections.items()
    }
    variables["AIRFLOW_CONN_SECURETRAIN_STORAGE"] = setting("AIRFLOW_CONN_SECURETRAIN_STORAGE")
    return variables


def airflow_environment(
    state_dir: Path, *, api_port: int = DEFAULT_API_PORT, dags_folder: Path | None = None
) -> dict[str, str]:
    """The environment variables every Airflow command of the local environment runs with.

    Reads ``<state_dir>/stack.env`` (the stack must have been brought up there) and returns the settings of
    it Airflow uses (:data:`AIRFLOW_STACK_SETTINGS`), the connections of :func:`securetrain_connections` and
    Airflow's configuration. ``dags_folder`` replaces the repository's ``dags/`` (to try DAGs kept
    elsewhere). On first use it creates ``AIRFLOW_HOME`` and the admin password file. The result holds no
    password itself, but the storage connection holds the account key; treat it like stack.env.

    Raises:
        StackConfigurationError: stack.env is missing or malformed.
        AirflowEnvironmentError: stack.env lacks a setting, or the admin password file is unusable.
    """
    state_dir = state_dir.resolve()
    layout = StackLayout(state_dir)
    stack_env = read_stack_env(layout.env_file)
    home = airflow_home(state_dir)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    _ensure_admin_password(state_dir)
    repo = repo_root()
    base_url = f"http://127.0.0.1:{api_port}"
    return {
        **{name: stack_env[name] for name in AIRFLOW_STACK_SETTINGS if name in stack_env},
        **securetrain_connections(stack_env, layout.env_file),
        # The rest of the pipeline's settings: where the local stack keeps its signing keys and role assignments.
        "SECURETRAIN_AUDIT_SIGNING_KEY": str(layout.audit_signing_key),
        "SECURETRAIN_MODEL_SIGNING_KEY": str(layout.model_signing_key),
        "SECURETRAIN_KEYVAULT_ROLES": str(roles_path(layout)),
        # `airflow standalone` starts its components as `airflow ...` from PATH: this venv's first.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{metadata_database(state_dir)}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder.resolve() if dags_folder is not None else repo / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": _SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(admin_password_file(state_dir)),
        # Loopback only: the UI shows key ids, attestation claims and run parameters.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        # Tasks reach the execution API at {base_url}/execution/; without it they would try port 8080.
        "AIRFLOW__API__BASE_URL": base_url,
    }


def process_environment(
    state_dir: Path,
    *,
    api_port: int = DEFAULT_API_PORT,
    dags_folder: Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of an Airflow process: this process's, less every ``stack.env`` setting (a shell
    that sourced stack.env carries them all), plus :func:`airflow_environment` and ``overrides``."""
    environment = airflow_environment(state_dir, api_port=api_port, dags_folder=dags_folder)
    withheld = set(read_stack_env(StackLayout(state_dir.resolve()).env_file))
    inherited = {name: value for name, value in os.environ.items() if name not in withheld}
    return {**inherited, **environment, **(overrides or {})}


def airflow_executable() -> Path:
    """The ``airflow`` command of this venv."""
    executable = Path(sys.executable).parent / "airflow"
    if not executable.is_file():
        raise AirflowEnvironmentError(f"{executable} is missing: install the project with `make setup`")
    return executable


def run_airflow(
    state_dir: Path,
    args: Sequence[str],
    *,
    api_port: int = DEFAULT_API_PORT,
    dags_folder: Path | None = None,
    capture_output: bool = False,
    overrides: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``airflow ARGS`` in the local Airflow environment of ``state_dir`` and return how it ended.

    ``overrides`` replace variables of the environment (a connection pointing elsewhere, say). The caller
    decides what a non-zero exit means (``airflow dags test`` exits 1 for a failed run).
    """
    environment = process_environment(state_dir, api_port=api_port, dags_folder=dags_folder, overrides=overrides)
    argv = [str(airflow_executable()), *args]
    log.debug("running %s", " ".join(argv))
    return subprocess.run(argv, env=environment, capture_output=capture_output, text=True, check=False)


def migrate(state_dir: Path) -> None:
    """Create or upgrade the metadata database of ``state_dir`` (``airflow db migrate``).

    Does nothing when the database is already at the installed Airflow's newest migration (``airflow db
    check-migrations``, a second or two, not the ten a migration run takes).

    Raises:
        AirflowCommandFailed: ``airflow db migrate`` failed (its output is quoted).
    """
    database = metadata_database(state_dir.resolve())
    # Airflow's own check, in the environment's process: importing Airflow (or its migration scripts) here
    # would configure it with this process's AIRFLOW_HOME.
    if database.is_file() and run_airflow(state_dir, ["db", "check-migrations", "-t", "0"], capture_output=True).returncode == 0:
        log.debug("the Airflow metadata database %s is up to date", database)
        return
    log.info("migrating the Airflow metadata database %s", database)
    result = run_airflow(state_dir, ["db", "migrate"], capture_output=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise AirflowCommandFailed(f"`airflow db migrate` failed for {database} (exit {result.returncode}):\n{tail}")


def exec_standalone(
    state_dir: Path, *, api_port: int = DEFAULT_API_PORT, dags_folder: Path | None = None
) -> NoReturn:
    """Replace this process with ``airflow standalone`` (api-server, scheduler, dag-processor, triggerer).

    Replacing rather than waiting for a child means Ctrl-C and SIGTERM reach ``airflow standalone``
    directly, which then stops its components itself; a waiting parent could die first and orphan them.
    Never returns.
    """
    environment = process_environment(state_dir, api_port=api_port, dags_folder=dags_folder)
    migrate(state_dir)
    executable = airflow_executable()
    ui = environment["AIRFLOW__API__BASE_URL"] + "/"
    print(f"Airflow UI: {ui}  (user {ADMIN_USER!r}, password in {admin_password_file(state_dir.resolve())})")
    print(f"Secure training page: {ui}securetrain/")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(executable, [str(executable), "standalone"], environment)
