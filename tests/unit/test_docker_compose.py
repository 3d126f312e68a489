"""docker-compose.yaml, checked through the model `docker-compose config` resolves (anchors merged, variables
substituted), and the `pki` service's script run for real into a temporary directory.

No Docker engine runs here, so nothing is started: these tests are what stands between the file and a
deployment that has never run (docs/deployment.md says so).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from securetrain.localstack.standins.keyvault.authz import Action, load_role_assignments
from securetrain.airflow.settings import PipelineSettings
from securetrain.localstack.airflow_env import keyvault_connections, securetrain_connections
from securetrain.localstack.identities import LocalIdentity
from securetrain.tee.settings import TeeSettings
from securetrain.localstack import StackLayout, data_owner
from securetrain.localstack.registry import SERVICES
from securetrain.localstack.services.attestation import approved_reference_values
from securetrain.localstack.standins.attestation_service.authz import BUILT_IN_ROLES, PolicyAction
from securetrain.localstack.standins.rbac import RoleAssignments
from securetrain.localstack.topology import COMPONENTS, DEPLOYMENT_SETTINGS, MIGRATE_COMMAND, SHARED_SETTINGS
from securetrain.tee.workload import host_data

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
PKI_SCRIPT = REPO / "docker" / "pki_init.py"

#: What docs/deployment.md tells an operator to put in .env; test values, distinct so substitutions show.
SECRETS = {
    "SECURETRAIN_BLOB_ACCOUNT_KEY": "dGVzdC1hY2NvdW50LWtleQ==",
    "SECURETRAIN_CVM_IDENTITY_HEADER": "test-cvm-identity-header",
    "POSTGRES_PASSWORD": "test-postgres-password",
    "REDIS_PASSWORD": "test-redis-password",
    "AIRFLOW_FERNET_KEY": "test-fernet-key",
    "AIRFLOW_JWT_SECRET": "test-jwt-secret",
    "AIRFLOW_API_SECRET_KEY": "test-api-secret-key",
    "AIRFLOW_ADMIN_PASSWORD": "test-admin-password",
}
#: Airflow's services: the topology's components (securetrain/localstack/topology.py) and the one-shot migration.
AIRFLOW_SERVICES = {component.name for component in COMPONENTS} | {"airflow-init"}
#: The worker in the data owner's zone, and the one file of the owner's it reads.
DATA_OWNER_WORKER = next(component.name for component in COMPONENTS if component.data_owner)
DATA_OWNER_SIGNING_KEY = "/srv/data-owner/secrets/data-owner/signing-key.pem"
#: Named volumes holding private keys or secrets, and the only services that may mount them.
PRIVATE_VOLUMES = {
    "pki-ca": {"pki"},
    "trainer-pki": {"pki", "trainer"},
    "data-owner-pki": {"pki", "data-owner-kek"},
    "data-owner-signing": {"pki", DATA_OWNER_WORKER},
    "trainer-data": {"trainer"},
    "airflow-keys": AIRFLOW_SERVICES,
    "keyvault-pki": {"pki", "keyvault"},
    "keyvault-data": {"keyvault"},
    "identity-pki": {"pki", "identity"},
    "attestation-data": {"attestation"},
    "identity-data": {"identity"},
}


def _compose_config(tmp_path: Path, variables: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail("docker-compose is not installed: run `make setup` (it installs Debian's docker-compose package)")
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in variables.items()))
    # --env-file: only these values, never a developer's own .env in the repository.
    return subprocess.run(
        [executable, "--env-file", str(env_file), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = _compose_config(tmp_path_factory.mktemp("compose"), SECRETS)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    document = yaml.safe_load(result.stdout)
    assert isinstance(document, dict)
    return document


def _services(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return model["services"]


def _one_shot(service: Mapping[str, Any]) -> bool:
    return service.get("restart") == "no"


def _volume_mounts(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume entry (docker-compose v1 writes them as strings)."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def test_every_long_running_service_has_a_healthcheck(model: dict[str, Any]) -> None:
    for name, service in _services(model).items():
        if _one_shot(service):
            assert "healthcheck" not in service, f"{name} runs once and exits: a health check cannot apply"
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck, f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL") and len(healthcheck["test"]) > 1, name


def test_dependencies_wait_for_health_or_completion(model: dict[str, Any]) -> None:
    services = _services(model)
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            target = services[dependency]
            expected = "service_completed_successfully" if _one_shot(target) else "service_healthy"
            assert how == {"condition": expected}, f"{name} depends on {dependency} with {how}, not {expected}"
    # What must exist before the rest starts: trust material, then the identity service (whose tokens manage the
    # attestation policy), the identity and attestation services before the vault, and every stand-in before the
    # trainer; the data owner sets the attestation policy before it creates the KEK.
    assert services["attestation"]["depends_on"].keys() == {"pki", "identity"}
    assert services["keyvault"]["depends_on"].keys() == {"pki", "identity", "attestation"}
    assert services["data-owner-kek"]["depends_on"].keys() == {"pki", "identity", "attestation", "keyvault"}
    assert services["trainer"]["depends_on"].keys() == {"pki", "azurite", "attestation", "identity", "keyvault"}
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert {"postgres", "redis", "airflow-init", "pki"} <= services[name]["depends_on"].keys(), name


def test_airflow_services_are_the_topology(model: dict[str, Any]) -> None:
    # The topology the local processes run (tests/e2e/test_celery_topology.py): the same components, each with
    # the same command (hence the same queues), the same shared settings, every per-deployment setting.
    services = _services(model)
    assert {name for name in services if name.startswith("airflow-")} == AIRFLOW_SERVICES
    for component in COMPONENTS:
        command = services[component.name]["command"]
        assert (shlex.split(command) if isinstance(command, str) else command) == list(component.command), component.name
        if component.is_worker:
            assert command.endswith("--queues " + ",".join(component.queues)), component.name
    init_script = services["airflow-init"]["command"][-1]
    assert f"airflow {shlex.join(MIGRATE_COMMAND)}" in init_script and "airflow users create --role Admin" in init_script
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        assert {key: environment.get(key) for key in SHARED_SETTINGS} == SHARED_SETTINGS, name
        assert set(DEPLOYMENT_SETTINGS) <= environment.keys(), name
    # Only the data owner's worker is given the data owner's signing key.
    holders = {name for name in AIRFLOW_SERVICES if "AIRFLOW_CONN_SECURETRAIN_DATA_OWNER" in services[name]["environment"]}
    assert holders == {DATA_OWNER_WORKER}
    connection = json.loads(services[DATA_OWNER_WORKER]["environment"]["AIRFLOW_CONN_SECURETRAIN_DATA_OWNER"])
    assert connection == {"conn_type": "generic", "extra": {"signing_key": DATA_OWNER_SIGNING_KEY}}


def test_the_topology_s_data_owner_queue_is_the_onboarding_dag_s() -> None:
    from securetrain.airflow.onboarding import DATA_OWNER_QUEUE  # noqa: PLC0415 - imports Airflow

    [worker] = [component for component in COMPONENTS if component.data_owner]
    assert worker.queues == (DATA_OWNER_QUEUE,)
    assert not any(DATA_OWNER_QUEUE in component.queues for component in COMPONENTS if component is not worker)


def test_airflow_runs_celery_on_postgres_and_redis(model: dict[str, Any]) -> None:
    services = _services(model)
    password = SECRETS["POSTGRES_PASSWORD"]
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        assert services[name]["build"]["dockerfile"] == "docker/airflow.Dockerfile", name
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"postgresql+psycopg2://airflow:{password}@postgres:5432/airflow"
        assert environment["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+postgresql://airflow:{password}@postgres:5432/airflow"
        assert environment["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")


def test_airflow_connections_are_the_local_stacks(model: dict[str, Any], tmp_path: Path) -> None:
    # The same connection ids and shapes as the local environment, built by its own code from the settings the
    # compose file gives Airflow: the hooks cannot tell the two apart. The Key Vault connections (service
    # principals with secrets) come from the file the `pki` service writes for the local-filesystem backend.
    environment = _services(model)["airflow-worker"]["environment"]
    compose_connections = {name: value for name, value in environment.items() if name.startswith("AIRFLOW_CONN_")}
    backend = json.loads(environment["AIRFLOW__SECRETS__BACKEND_KWARGS"])["connections_file_path"]
    assert environment["AIRFLOW__SECRETS__BACKEND"] == "airflow.secrets.local_filesystem.LocalFilesystemBackend"
    out = _pki(tmp_path)
    written = json.loads((out / "airflow" / Path(backend).relative_to("/srv/securetrain")).read_text())
    # The files the connections name are in airflow-pki, where the local stack's settings would name them.
    files = {
        "SECURETRAIN_CA_BUNDLE": "/srv/securetrain/ca/ca.pem",
        "SECURETRAIN_KEYVAULT_URL": "https://keyvault:10800",
        "SECURETRAIN_IDENTITY_ENDPOINT": "https://identity:10700",
        "SECURETRAIN_ATTESTATION_ENDPOINT": "https://attestation:10443",
        "SECURETRAIN_CVM_ENDPOINT": "https://trainer:10600",
        "SECURETRAIN_CVM_PIPELINE_CERT": "/srv/securetrain/certs/client/pipeline.pem",
        "SECURETRAIN_CVM_PIPELINE_KEY": "/srv/securetrain/certs/client/pipeline.key",
        "AIRFLOW_CONN_SECURETRAIN_STORAGE": environment["AIRFLOW_CONN_SECURETRAIN_STORAGE"],
    }
    identities = {name: LocalIdentity.load(out / f"identity/secrets/identities/{name}.json") for name in ("pipeline", "key-rotator")}
    local = securetrain_connections(files, out / "identity" / "stack.env")
    keyvault = keyvault_connections(files["SECURETRAIN_KEYVAULT_URL"], files["SECURETRAIN_IDENTITY_ENDPOINT"],
                                    files["SECURETRAIN_CA_BUNDLE"], identities)  # fmt: skip
    assert written == json.loads(json.dumps(keyvault))
    assert {f"AIRFLOW_CONN_{conn_id.upper()}" for conn_id in written} | compose_connections.keys() == local.keys()
    for name, value in compose_connections.items():
        assert json.loads(value) == json.loads(local[name]), name
    storage = json.loads(environment["AIRFLOW_CONN_SECURETRAIN_STORAGE"])
    assert storage == {
        "conn_type": "wasb",
        "host": "https://azurite:10000/devstoreaccount1",
        "login": "devstoreaccount1",
        "password": SECRETS["SECURETRAIN_BLOB_ACCOUNT_KEY"],
        "extra": {"connection_verify": "/srv/securetrain/ca/ca.pem"},
    }


def test_the_trainer_gets_the_tee_settings_and_a_managed_identity(model: dict[str, Any]) -> None:
    environment = _services(model)["trainer"]["environment"]
    assert environment["IDENTITY_ENDPOINT"] == "https://identity:10700/msi/token"
    assert environment["IDENTITY_HEADER"] == SECRETS["SECURETRAIN_CVM_IDENTITY_HEADER"]
    settings = {name for name in environment if name.startswith("SECURETRAIN_")} - {"SECURETRAIN_SNP_PLATFORM_DIR"}
    assert settings <= {TeeSettings.variable(field) for field in TeeSettings.model_fields}
    assert not any("ACCOUNT_KEY" in name or "SECRET" in name for name in environment)


def test_private_material_stays_with_its_owner(model: dict[str, Any]) -> None:
    services = _services(model)
    mounted_by: dict[str, set[str]] = {}
    for name, service in services.items():
        for source, target, mode in _volume_mounts(service):
            # Named volumes only: a host path could hand a container the developer's .securetrain/.
            assert not source.startswith(("/", ".", "~")), f"{name} mounts the host path {source}"
            mounted_by.setdefault(source, set()).add(name)
            if source.endswith("-pki") and name != "pki":
                assert (target, mode) == ("/srv/securetrain", "ro"), f"{name} mounts {source} at {target}:{mode}"
    for volume, owners in PRIVATE_VOLUMES.items():
        assert mounted_by.get(volume, set()) <= owners, f"{volume} is mounted by {sorted(mounted_by[volume] - owners)}"
    for name, service in services.items():
        if name != "trainer":
            assert "snp-platform" not in json.dumps(service.get("environment", {})), name
    # Airflow's environment carries only the settings Airflow uses: no TEE identity, platform keys, data owner.
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        settings = {key for key in environment if key.startswith("SECURETRAIN_")}
        allowed = {PipelineSettings.variable(field) for field in PipelineSettings.model_fields}
        assert settings <= allowed, f"{name} gets {sorted(settings - allowed)}"
        if name == DATA_OWNER_WORKER:  # its signing key, checked above, and nothing else of the data owner's
            environment = {key: value for key, value in environment.items() if key != "AIRFLOW_CONN_SECURETRAIN_DATA_OWNER"}
        text = json.dumps(environment)
        assert not any(secret in text for secret in ("cvm.json", "data-owner", "snp-platform", "master-key")), name
    # Only the Airflow API server is reachable from the host, and only on its loopback address.
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert published == {"airflow-apiserver": ["127.0.0.1:8080:8080/tcp"]}


def test_secrets_are_required(tmp_path: Path) -> None:
    for missing in ("SECURETRAIN_BLOB_ACCOUNT_KEY", "POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET"):
        result = _compose_config(tmp_path, {name: value for name, value in SECRETS.items() if name != missing})
        assert result.returncode != 0, f"docker-compose accepted the file without {missing}"
        assert f"set {missing}" in result.stderr


def test_dockerfiles_named_by_build_exist(model: dict[str, Any]) -> None:
    dockerfiles = set()
    for name, service in _services(model).items():
        if "build" in service:
            path = Path(service["build"]["context"]) / service["build"]["dockerfile"]
            assert path.is_file(), f"{name} builds from {path}, which does not exist"
            dockerfiles.add(path.relative_to(REPO).as_posix())
    assert dockerfiles == {"docker/airflow.Dockerfile", "docker/securetrain.Dockerfile"}
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert pinned is not None
    airflow_base = re.search(r"^FROM (\S+)$", (REPO / "docker/airflow.Dockerfile").read_text(), re.MULTILINE)
    assert airflow_base is not None and airflow_base.group(1) == f"apache/airflow:{pinned.group(1)}-python3.11"
    assert re.search(r"^FROM python:3\.11-slim", (REPO / "docker/securetrain.Dockerfile").read_text(), re.MULTILINE)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".env", ".venv", "node_modules", ".securetrain"} <= set(ignored)


def test_stand_in_health_checks_name_registered_services(model: dict[str, Any]) -> None:
    registered = {service.name for service in SERVICES}
    for name in ("attestation", "identity", "keyvault", "trainer"):
        test = _services(model)[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        stack_name, host, port = test[4:]
        assert stack_name in registered and host == name, name
        assert f"--port={port}" in _services(model)[name]["command"], name


def _pki(tmp_path: Path, runs: int = 1) -> Path:
    """Run the `pki` service's script ``runs`` times into ``tmp_path``, with its compose environment; its OUT."""
    out, ca_dir = tmp_path / "out", tmp_path / "ca"
    env = {**os.environ, "SECURETRAIN_CVM_IDENTITY_HEADER": SECRETS["SECURETRAIN_CVM_IDENTITY_HEADER"]}
    for _ in range(runs):
        subprocess.run([sys.executable, str(PKI_SCRIPT), str(out), str(ca_dir)], check=True, capture_output=True,
                       timeout=120, env=env)  # fmt: skip
    return out


def _tree_files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file() and path.name != ".lock"}


def test_pki_service_gives_each_container_its_share(model: dict[str, Any], tmp_path: Path) -> None:
    pki = _services(model)["pki"]
    assert pki["command"][-2:] == ["/srv/pki/out", "/srv/pki/ca"]
    trees = {target.removeprefix("/srv/pki/out/"): source for source, target, _ in _volume_mounts(pki)}
    assert trees.pop("/srv/pki/ca") == "pki-ca"
    assert trees.pop("data-owner-signing") == "data-owner-signing"
    assert trees == {
        name: f"{name}-pki" for name in ("azurite", "attestation", "identity", "keyvault", "trainer", "airflow", "data-owner")
    }

    out = _pki(tmp_path, runs=2)  # a second run (every `docker compose up`) keeps what is valid
    server = {name: {"ca/ca.pem", f"certs/server/{name}.pem", f"certs/server/{name}.key"} for name in trees if name != "data-owner"}
    assert _tree_files(out / "azurite") == server["azurite"]
    assert _tree_files(out / "attestation") == server["attestation"] | {"policies/attestation-roles.json",
                                                                         "policies/simulated-ark.pem"}  # fmt: skip
    assert _tree_files(out / "keyvault") == server["keyvault"] | {"policies/keyvault-roles.json"}
    identities = {f"secrets/identities/{name}.json" for name in ("pipeline", "cvm", "key-rotator", "data-owner")}
    assert identities <= _tree_files(out / "identity")
    trainer_files = _tree_files(out / "trainer")
    assert {"certs/client/monitor.pem", "certs/client/monitor.key"} <= trainer_files
    assert not any(path.startswith("secrets/identities/") for path in trainer_files)  # a managed identity: no secret
    assert any(path.startswith("snp-platform/") and path.endswith(".key") for path in trainer_files)
    assert _tree_files(out / "airflow") == {
        "ca/ca.pem",
        "certs/client/pipeline.pem",
        "certs/client/pipeline.key",
        "secrets/airflow-connections.json",
        "policies/release-policy.json",
    }
    assert _tree_files(out / "data-owner") == {
        "ca/ca.pem", "secrets/identities/data-owner.json", "policies/release-policy.json",
        "secrets/data-owner/signing-key.pem", "policies/data-owner-key.pem", "policies/sevsnpvm-attestation-policy.txt",
    }  # fmt: skip
    # The data owner's worker gets the signing key alone, where its connection names it.
    assert _tree_files(out / "data-owner-signing") == {"secrets/data-owner/signing-key.pem"}
    mounted = {target: source for source, target, _ in _volume_mounts(_services(model)[DATA_OWNER_WORKER])}
    assert mounted["/srv/data-owner"] == "data-owner-signing"
    assert (out / "data-owner-signing" / Path(DATA_OWNER_SIGNING_KEY).relative_to("/srv/data-owner")).read_bytes() == (
        out / "data-owner/secrets/data-owner/signing-key.pem").read_bytes()
    everywhere = {path for path in out.rglob("*") if path.is_file()}
    assert not any(path.name == "ca.key" for path in everywhere), "the CA key left the pki-ca volume"
    assert not any("snp-platform" in path.parts for path in everywhere if out / "trainer" not in path.parents)
    assert not any(path.name == "cvm.json" for path in everywhere if out / "trainer" not in path.parents and out / "identity" not in path.parents)
    assert not any(path.name == "data-owner.json" for path in everywhere if out / "data-owner" not in path.parents and out / "identity" not in path.parents)

    for name in ("azurite", "attestation", "identity", "keyvault", "trainer"):
        certificate = x509.load_pem_x509_certificate((out / name / f"certs/server/{name}.pem").read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in names.get_values_for_type(x509.DNSName), f"{name}'s certificate does not name it"
    # The vault's roles name the identities the token issuer knows; the policy pins the installed trainer.
    identity = {name: LocalIdentity.load(out / f"identity/secrets/identities/{name}.json")
                for name in ("pipeline", "key-rotator", "data-owner", "cvm")}  # fmt: skip
    connections = json.loads((out / "airflow/secrets/airflow-connections.json").read_text())
    assert connections["securetrain_keyvault"]["login"] == identity["pipeline"].client_id
    assert identity["cvm"].identity_header == SECRETS["SECURETRAIN_CVM_IDENTITY_HEADER"]
    identity = {name: value.object_id for name, value in identity.items()}
    roles = load_role_assignments(out / "keyvault/policies/keyvault-roles.json")
    private_use = {Action.UNWRAP, Action.DECRYPT, Action.RELEASE}
    granted = {name: {action for action in Action if roles.allows(oid, action)} for name, oid in identity.items()}
    assert granted["pipeline"] == {Action.READ}
    assert granted["key-rotator"] == {Action.READ, Action.ROTATE}
    assert {Action.CREATE, Action.READ} <= granted["data-owner"] and not granted["data-owner"] & private_use
    assert granted["cvm"] == {Action.RELEASE}
    # Only the data owner manages the attestation policies.
    attestation_roles = RoleAssignments.load(out / "attestation/policies/attestation-roles.json", BUILT_IN_ROLES)
    managers = {name for name, oid in identity.items() if attestation_roles.allows(oid, PolicyAction.WRITE)}
    assert managers == {"data-owner"}
    # The trainer holds the data owner's public key only; the policy pins the workload trusting that key.
    assert not (out / "trainer" / "secrets" / "data-owner").exists()
    trusted = data_owner.key_ids(StackLayout(out / "trainer"))
    assert trusted == data_owner.key_ids(StackLayout(out / "data-owner"))
    policy = (out / "data-owner/policies/sevsnpvm-attestation-policy.txt").read_text()
    assert approved_reference_values(policy)[1] == {host_data(trusted)}
