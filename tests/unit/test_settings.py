"""Settings: one typed object per process, from the environment over a dotenv file, naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.identity import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential

from securetrain.airflow.settings import PipelineSettings
from securetrain.core.cli.settings import CommandSettings
from securetrain.core.errors import ConfigurationError
from securetrain.core.settings import ServiceSettings
from securetrain.tee.agent.__main__ import HARDWARE_PROVIDERS, evidence_provider
from securetrain.tee.data_owners import DataOwnerKeys
from securetrain.tee.evidence import EvidenceUnavailable
from securetrain.tee.settings import TeeSettings

_AZURE = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST", "IDENTITY_ENDPOINT",
          "IDENTITY_HEADER")  # fmt: skip


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting of the test process leaks in: each test states its own."""
    import os  # noqa: PLC0415

    for name in [name for name in os.environ if name.startswith("SECURETRAIN_")] + list(_AZURE):
        monkeypatch.delenv(name, raising=False)


def test_a_dotenv_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_file = tmp_path / "pipeline.env"
    settings_file.write_text("export SECURETRAIN_STORAGE_ACCOUNT_URL='https://from-file.blob.core.windows.net'\n"
                             "export SECURETRAIN_KEYVAULT_URL='https://vault.vault.azure.net'\n")  # fmt: skip
    monkeypatch.setenv("SECURETRAIN_STORAGE_ACCOUNT_URL", "https://from-env.blob.core.windows.net")
    settings = ServiceSettings.load(settings_file)
    assert settings.url("storage_account_url") == "https://from-env.blob.core.windows.net"
    assert settings.url("keyvault_url") == "https://vault.vault.azure.net"
    assert settings.tls_verify is True  # no CA bundle: the system's roots


def test_only_https_and_a_missing_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SECURETRAIN_KEYVAULT_URL: URL scheme should be 'https'"):
        ServiceSettings.load(keyvault_url="http://vault.vault.azure.net")
    with pytest.raises(ConfigurationError, match=r"\$SECURETRAIN_ATTESTATION_ENDPOINT is not set"):
        ServiceSettings.load().url("attestation_endpoint")
    with pytest.raises(ConfigurationError, match="SECURETRAIN_CA_BUNDLE: Path does not point to a file"):
        ServiceSettings.load(ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="settings file .* does not exist"):
        ServiceSettings.load(tmp_path / "missing.env")


def test_azure_identitys_own_variables_choose_the_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(ServiceSettings.load().credential(), DefaultAzureCredential)
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000002")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cr3t-value")
    settings = ServiceSettings.load()
    assert settings.variable("client_secret") == "AZURE_CLIENT_SECRET"
    assert isinstance(settings.credential(), ClientSecretCredential)
    assert "s3cr3t-value" not in repr(settings)  # a settings object in a log line shows no secret
    monkeypatch.delenv("AZURE_TENANT_ID")
    with pytest.raises(ConfigurationError, match="client secret needs its client id and tenant id"):
        ServiceSettings.load().credential()


def test_the_tee_signs_in_only_as_its_managed_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as missing:
        TeeSettings.load()
    for variable in ("SECURETRAIN_STORAGE_ACCOUNT_URL", "SECURETRAIN_ATTESTATION_ENDPOINT", "SECURETRAIN_KEYVAULT_RELEASE_ROOT"):
        assert variable in str(missing.value)
    root = tmp_path / "root.pem"
    root.write_text("-")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "a secret in the TEE's environment is not used")
    settings = TeeSettings.load(storage_account_url="https://a.blob.core.windows.net",
                                attestation_endpoint="https://p.weu.attest.azure.net", keyvault_release_root=root)  # fmt: skip
    assert isinstance(settings.credential(), ManagedIdentityCredential)


def test_the_tees_evidence_provider_is_a_setting_with_azures_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root.pem"
    root.write_text("-")
    required = {"storage_account_url": "https://a.blob.core.windows.net",
                "attestation_endpoint": "https://p.weu.attest.azure.net", "keyvault_release_root": root}  # fmt: skip
    owners = DataOwnerKeys.from_files([])
    monkeypatch.setenv("SECURETRAIN_EVIDENCE_PROVIDER", "azure-cvm")
    settings = TeeSettings.load(**required)
    assert (settings.vtpm_tcti, settings.imds_endpoint) == ("device:/dev/tpmrm0", "http://169.254.169.254")
    assert settings.event_log == Path("/sys/kernel/security/tpm0/binary_bios_measurements")
    assert evidence_provider(settings, owners, HARDWARE_PROVIDERS).tee_type == "azure-cvm"
    monkeypatch.setenv("SECURETRAIN_IMDS_ENDPOINT", "http://imds.example")  # only Azure's own address may be http
    with pytest.raises(ConfigurationError, match="use https, or Azure's http://169.254.169.254"):
        evidence_provider(TeeSettings.load(**required), owners, HARDWARE_PROVIDERS)
    monkeypatch.delenv("SECURETRAIN_EVIDENCE_PROVIDER")
    with pytest.raises(EvidenceUnavailable, match="not a confidential guest with configfs-tsm"):  # the default
        evidence_provider(TeeSettings.load(**required), owners, HARDWARE_PROVIDERS)
    monkeypatch.setenv("SECURETRAIN_EVIDENCE_PROVIDER", "azure-aci")
    with pytest.raises(ConfigurationError, match=r"\$SECURETRAIN_SECURITY_CONTEXT_DIR is not set"):
        evidence_provider(TeeSettings.load(**required), owners, HARDWARE_PROVIDERS)
    monkeypatch.setenv("UVM_SECURITY_CONTEXT_DIR", str(tmp_path))  # ACI's own variable is the default
    assert TeeSettings.load(**required).security_context_dir == tmp_path
    with pytest.raises(EvidenceUnavailable, match="not a confidential guest with configfs-tsm"):
        evidence_provider(TeeSettings.load(**required), owners, HARDWARE_PROVIDERS)
    monkeypatch.setenv("SECURETRAIN_SECURITY_CONTEXT_DIR", str(tmp_path / "ours"))
    assert TeeSettings.load(**required).security_context_dir == tmp_path / "ours"
    monkeypatch.setenv("SECURETRAIN_EVIDENCE_PROVIDER", "simulated")
    with pytest.raises(ConfigurationError, match=r"\$SECURETRAIN_EVIDENCE_PROVIDER is 'simulated'; the evidence "
                       "providers here are azure-aci, azure-cvm, configfs-tsm"):
        evidence_provider(TeeSettings.load(**required), owners, HARDWARE_PROVIDERS)


def test_each_zone_reads_its_own_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    monkeypatch.setenv("SECURETRAIN_RELEASE_POLICY", str(policy))
    monkeypatch.setenv("SECURETRAIN_AUDIT_SIGNING_KEY", str(tmp_path / "audit.pem"))
    pipeline = PipelineSettings.load()
    assert pipeline.release_policy == policy and pipeline.audit_signing_key == tmp_path / "audit.pem"
    with pytest.raises(ConfigurationError, match=r"\$SECURETRAIN_KEYVAULT_ROLES is not set"):
        pipeline.required("keyvault_roles")
    with pytest.raises(ConfigurationError, match=r"\$SECURETRAIN_CVM_ENDPOINT is not set"):
        CommandSettings.load().agent()
