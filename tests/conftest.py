"""Fixtures shared by the whole suite.

``local_stack`` runs the real launcher (``securetrain.localstack.up``) once per test session in a temporary
state directory, every service on a free loopback port, and brings it down at the end. Tests reach the
services as the production code does, through settings: ``local_stack.settings(identity)`` is what the stack
wrote for one of its applications (what ``securetrain --settings FILE`` reads), ``tee_settings`` puts the test
in the TEE's place; ``local_stack.env`` is the parsed ``stack.env`` (ports, paths, the stand-ins' logs).

``stack_config`` is for tests that start, kill and stop a stack of their own: a configuration in a fresh
state directory with free ports, brought down after the test whatever it left running.

``store``, ``shard`` and ``dataset_ref`` are for tests that run jobs: the stack's storage, breast-cancer
sealed by the stack's data owner, and the owner-signed manifest a job spec names.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from azure.core.credentials import TokenCredential
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.audit.checkpoints import key_fingerprint, load_or_create_signing_key, public_key_pem
from securetrain.core.cli.settings import CommandSettings
from securetrain.core.cvm_client import CvmClient
from securetrain.core.datasets import bundled_table, to_parquet
from securetrain.core.keyvault import fetch_kek_public_key
from securetrain.core.contracts.job_spec import DatasetRef
from securetrain.core.onboarding import SealedShard, new_manifest, seal_and_upload
from securetrain.core.storage import BlobStore
from securetrain.localstack import StackConfig, StackLayout, data_owner, down, read_stack_env, up
from securetrain.localstack.consortium import Consortium, form_consortium
from securetrain.localstack.ports import free_port_pair, free_ports
from securetrain.localstack.identities import PIPELINE_IDENTITY
from securetrain.localstack.emulated_platform import EmulatedPlatform
from securetrain.localstack.registry import services_for
from securetrain.localstack.service import Service
from securetrain.localstack.services.azurite import AZURITE
from securetrain.localstack.services.vtpm import VTPM
from securetrain.localstack.settings import settings_path, tee_environment
from securetrain.tee.settings import TeeSettings


@contextlib.contextmanager
def process_environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the duration, then the environment as it was."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: The platform of the tests' stacks: the raw-SNP simulation, on which the pipeline's tests (which do not depend on
#: the platform) run fastest. The emulated Azure CVM, the product's default, has its own tests
#: (tests/integration/test_azure_cvm_stack.py, test_azure_guest_*.py, test_vtpm_*.py) and the demo's.
TEST_PLATFORM = EmulatedPlatform.SNP


def _config_with_free_ports(
    state_dir: Path, services: Sequence[Service] | None = None, platform: EmulatedPlatform = TEST_PLATFORM
) -> StackConfig:
    """A configuration for a stack of ``services`` (default: the platform's) in ``state_dir``, each on a free port
    (the vTPM on one whose next port is free too)."""
    services = services_for(platform) if services is None else services
    ports = dict(zip([service.name for service in services], free_ports(len(services)), strict=True))
    if VTPM.name in ports:
        ports[VTPM.name] = free_port_pair(set(ports.values()))
    return StackConfig.resolve(state_dir, ports, services, platform)


@dataclass(frozen=True)
class LocalStack:
    """A running local stack: its configuration and the settings it wrote to ``stack.env``."""

    config: StackConfig
    env: dict[str, str]

    @property
    def state_dir(self) -> Path:
        """The stack's state directory."""
        return self.config.layout.root

    @property
    def ca_bundle(self) -> Path:
        """The stack CA certificate every client must trust."""
        return Path(self.env["SECURETRAIN_CA_BUNDLE"])

    @property
    def blob_endpoint(self) -> str:
        """Azurite's account URL."""
        return self.env["SECURETRAIN_BLOB_ENDPOINT"]

    @property
    def layout(self) -> StackLayout:
        return self.config.layout

    def settings_file(self, identity: str = PIPELINE_IDENTITY) -> Path:
        """The dotenv file of application ``identity``'s settings (``securetrain --settings FILE``)."""
        return settings_path(self.layout, identity)

    def settings(self, identity: str = PIPELINE_IDENTITY) -> CommandSettings:
        """The settings of a process signing in as application ``identity`` (pipeline, key-rotator, data-owner)."""
        return CommandSettings.load(self.settings_file(identity))

    def credential(self, identity: str = PIPELINE_IDENTITY) -> TokenCredential:
        """azure-identity's credential of application ``identity``, from its settings."""
        return self.settings(identity).credential()

    def public_key_file(self, key: Ed25519PrivateKey | Path) -> Path:
        """The public half of ``key`` (or of the signing key in that PEM file, made if need be) as a PEM file:
        what an operator publishes for ``--public-key``."""
        private = load_or_create_signing_key(key) if isinstance(key, Path) else key
        path = self.state_dir / "published" / f"{key_fingerprint(private.public_key())}.pem"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(public_key_pem(private))
        return path

    def agent_client(self, identity: str) -> CvmClient:
        """A client of the agent's API with ``identity``'s client certificate (``pipeline`` or ``monitor``)."""
        prefix = f"SECURETRAIN_CVM_{identity.upper()}"
        return CvmClient(self.env["SECURETRAIN_CVM_ENDPOINT"], cert=Path(self.env[f"{prefix}_CERT"]),
                         key=Path(self.env[f"{prefix}_KEY"]), ca_bundle=self.ca_bundle)  # fmt: skip

    def tee_environment(self) -> dict[str, str]:
        """The environment the stack starts the TEE's agent with."""
        return tee_environment(self.env, self.layout)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The local stack, up for the whole session (its services shared by the tests that use it)."""
    config = _config_with_free_ports(tmp_path_factory.mktemp("local-stack"))
    try:
        up(config)
        yield LocalStack(config, read_stack_env(config.layout.env_file))
    finally:
        down(config)


@pytest.fixture
def tee_settings(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> TeeSettings:
    """The TEE's settings, with this test process in the TEE's place for the test: its managed-identity endpoint
    and header in the environment, where ``ManagedIdentityCredential`` looks for them at each request."""
    for name, value in local_stack.tee_environment().items():
        monkeypatch.setenv(name, value)
    return TeeSettings.load()


@pytest.fixture
def stack_config(tmp_path: Path) -> Iterator[StackConfig]:
    """A stack of the test's own (not started) for testing the launcher; whatever it starts is stopped
    afterwards. It runs Azurite alone: the launcher's mechanics do not depend on which service it runs."""
    config = _config_with_free_ports(tmp_path / "state", (AZURITE,))
    try:
        yield config
    finally:
        down(config)


@pytest.fixture(scope="session")
def onboarded_dataset(local_stack: LocalStack) -> Path:
    """The local stack with Airflow's database migrated and breast-cancer onboarded by ``data_onboarding``."""
    from securetrain.localstack.airflow_env import migrate, run_airflow  # noqa: PLC0415 - only the Airflow tests need it

    migrate(local_stack.state_dir)
    # The data owner's run of its own DAG: only it gets the owner's signing key.
    owner = data_owner.airflow_connection(StackLayout(local_stack.state_dir))
    result = run_airflow(local_stack.state_dir, ["dags", "test", "data_onboarding"], capture_output=True, overrides=owner)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return local_stack.state_dir


@pytest.fixture(scope="module")
def authority(local_stack) -> str:
    """The stack's attestation service: the authority its release policies trust."""
    return local_stack.env["SECURETRAIN_ATTESTATION_ENDPOINT"]


@pytest.fixture(scope="module")
def pool(local_stack, authority) -> Consortium:
    """The example consortium (securetrain.localstack.consortium): two hospitals, their KEKs bound to the contract
    all three parties signed."""
    return form_consortium(local_stack.layout, authority)


@pytest.fixture(scope="module")
def store(local_stack):
    """The stack's Azurite, with the containers the pipeline's environment preparation makes before a job."""
    with BlobStore.from_settings(local_stack.settings()) as blob_store:
        for container in ("checkpoints", "models"):
            blob_store.ensure_container(container)
        yield blob_store


@pytest.fixture(scope="module")
def shard(local_stack, store) -> SealedShard:
    """Breast-cancer sealed by the data owner for the stack's KEK and uploaded to Azurite."""
    kek = fetch_kek_public_key(local_stack.env["SECURETRAIN_KEK_ID"], local_stack.settings())
    return seal_and_upload(
        to_parquet(bundled_table("breast-cancer")), kek=kek, store=store, container="datasets",
        blob=f"job-{uuid.uuid4().hex[:8]}/shard-0.parquet.sealed", file_format="parquet",
        context={"dataset_id": "breast-cancer"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def dataset_ref(local_stack, store, shard) -> DatasetRef:
    """The manifest of ``shard`` as the stack's data owner signs it: what a job spec names."""
    owner_key = data_owner.signing_key(StackLayout(local_stack.state_dir))
    version = shard.blob.split("/", 1)[0]
    manifest = new_manifest(shard.context["dataset_id"], version, shard.kek_id, [shard], owner_key)
    return manifest.write(store, shard.container)
