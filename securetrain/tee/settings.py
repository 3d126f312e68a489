"""The TEE's settings: the services its agent uses, the roots it trusts, the managed identity it signs in as, and
where its hardware evidence comes from.

Read from the agent's environment (pydantic-settings): ``SECURETRAIN_STORAGE_ACCOUNT_URL``,
``SECURETRAIN_ATTESTATION_ENDPOINT``, ``SECURETRAIN_KEYVAULT_RELEASE_ROOT`` (the roots Key Vault's release
responses must chain to), optionally ``SECURETRAIN_CA_BUNDLE`` and ``SECURETRAIN_MANAGED_IDENTITY_CLIENT_ID``.
The Key Vault of each KEK is named by the KEK's id in the job, not here.

The evidence: ``SECURETRAIN_EVIDENCE_PROVIDER`` names the provider (``azure-cvm``: an Azure confidential VM's
vTPM and IMDS; ``azure-aci``: an ACI confidential container group; ``configfs-tsm``, the default: a bare SEV-SNP guest's kernel; the local stack adds ``simulated``).
The ``azure-cvm`` provider reads ``SECURETRAIN_VTPM_TCTI`` (the vTPM, a tpm2-tss TCTI; default Azure's
``device:/dev/tpmrm0``), ``SECURETRAIN_IMDS_ENDPOINT`` (default Azure's ``http://169.254.169.254``; any other
endpoint must be https, verified with ``SECURETRAIN_CA_BUNDLE`` when set) and ``SECURETRAIN_EVENT_LOG`` (the TCG
event log; default ``/sys/kernel/security/tpm0/binary_bios_measurements``). On Azure none of the three is set.
The ``azure-aci`` provider (Azure Container Instances, confidential) reads the report through configfs-tsm and
the security context directory ``SECURETRAIN_SECURITY_CONTEXT_DIR``, by default ACI's own
``UVM_SECURITY_CONTEXT_DIR``.

The GPU: ``SECURETRAIN_GPU`` names the GPU evidence provider the TEE requires before any key (``none``, the
default; ``nvml``: an NVIDIA H100 in confidential-computing mode through NVIDIA's NVML; the local stack adds
``simulated``). With a GPU, ``SECURETRAIN_GPU_ATTESTATION_ENDPOINT`` is the NRAS-style service that appraises
its evidence, ``SECURETRAIN_GPU_TOKEN_ISSUER`` the issuer its tokens must name (by default the endpoint itself),
``SECURETRAIN_GPU_TOKEN_JWKS`` the JWKS whose P-384 keys must sign them ES384 (by default NRAS's
``/.well-known/jwks.json`` on the endpoint's origin: NRAS publishes no OpenID metadata), and
``SECURETRAIN_GPU_REQUIRE_MEASUREMENTS`` (default true) whether the GPU's measurements must have matched
reference values. All five are part of the measured configuration
(:meth:`GpuSettings.gpu_configuration`, in HOST_DATA): a host that starts the TEE without its GPU requirement
starts another workload, which the release policy refuses.

The TEE signs in only as a managed identity (``ManagedIdentityCredential``: IMDS on a confidential VM, or
``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` where the host exposes them): no secret that could sign in as the
TEE exists anywhere, so only the TEE's host can obtain its tokens, and Key Vault's release policy still
decides whether that host is an approved TEE.

The data path's memory (:class:`DataPathSettings`) is the TEE's own configuration too, never the job's:
``SECURETRAIN_DATA_CACHE_BYTES``, ``SECURETRAIN_DATA_STREAM_BUDGET_BYTES``, ``SECURETRAIN_DATA_SHARDS_IN_FLIGHT``,
``SECURETRAIN_DATA_WINDOW_SHARDS``, ``SECURETRAIN_DATA_CHECKPOINT_WINDOWS`` and ``SECURETRAIN_DATA_LANES``
(docs/trainer.md, "The data path").
So is the number of data-parallel training workers (:class:`WorkerSettings`): ``SECURETRAIN_TRAINING_WORKERS``
(default 1: training in the agent's process), ``SECURETRAIN_TRAINING_RESTARTS``,
``SECURETRAIN_TRAINING_RENDEZVOUS_TIMEOUT_S`` and ``SECURETRAIN_TRAINING_WORKER_THREADS`` (docs/trainer.md,
"Several workers in one TEE").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, Field, FilePath, NonNegativeInt, PositiveInt

from securetrain.core.credentials import ClosableCredential
from securetrain.core.errors import ConfigurationError
from securetrain.core.settings import HttpsUrl, ServiceSettings, Settings

if TYPE_CHECKING:
    from securetrain.core.storage import BlobStore
    from securetrain.tee.gpu_attestation import GpuRequirement

NO_GPU_PROVIDER = "none"
#: Where an Azure confidential VM exposes what the ``azure-cvm`` provider reads: the vTPM (as tpm2-tss names it),
#: IMDS, and the TCG event log of its boot. Defined here, not by the provider, so that a process that only needs
#: the TEE's storage settings (a training worker) loads neither the evidence providers nor tpm2-tss.
AZURE_TCTI = "device:/dev/tpmrm0"
AZURE_IMDS_ENDPOINT = "http://169.254.169.254"
AZURE_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")


class GpuSettings(Settings):
    """The GPU the TEE requires: read by the agent, and by ``securetrain cvm measure`` to measure the same workload."""

    #: The GPU evidence provider the TEE requires (``none``: no GPU is attested).
    gpu: str = NO_GPU_PROVIDER
    #: The NRAS-style service that appraises the GPU's evidence.
    gpu_attestation_endpoint: HttpsUrl | None = None
    #: The issuer the GPU service's tokens must name (default: the endpoint).
    gpu_token_issuer: HttpsUrl | None = None
    #: The JWKS that publishes the keys that must sign them (default: NRAS's path on the endpoint's origin).
    gpu_token_jwks: HttpsUrl | None = None
    #: Whether the GPU's measurements must have matched reference values (``measres`` success).
    gpu_require_measurements: bool = True

    def gpu_requirement(self) -> GpuRequirement | None:
        """What the TEE requires of its GPU; None when it requires none."""
        from securetrain.tee.gpu_attestation import GpuRequirement, default_token_jwks  # noqa: PLC0415 - not a worker's

        if self.gpu == NO_GPU_PROVIDER:
            return None
        if self.gpu_attestation_endpoint is None:
            raise ConfigurationError(
                f"${self.variable('gpu')} is {self.gpu!r}: the TEE needs ${self.variable('gpu_attestation_endpoint')}, "
                "the service that appraises its GPU's evidence"
            )
        endpoint = self.url("gpu_attestation_endpoint")
        issuer = self.url("gpu_token_issuer") if self.gpu_token_issuer is not None else endpoint
        jwks = self.url("gpu_token_jwks") if self.gpu_token_jwks is not None else default_token_jwks(endpoint)
        return GpuRequirement(self.gpu, endpoint, issuer, jwks, self.gpu_require_measurements)

    def gpu_configuration(self) -> dict[str, Any]:
        """The GPU requirement as the workload manifest measures it (:func:`securetrain.tee.workload.manifest`)."""
        from securetrain.tee.gpu_attestation import NO_GPU  # noqa: PLC0415 - not a worker's

        requirement = self.gpu_requirement()
        return dict(NO_GPU) if requirement is None else requirement.measured()


class TeeSettings(ServiceSettings, GpuSettings):
    """What the agent needs to attest, obtain keys and read and write blobs."""

    storage_account_url: HttpsUrl
    attestation_endpoint: HttpsUrl
    keyvault_release_root: FilePath
    #: The name of the evidence provider (the agent's ``HARDWARE_PROVIDERS``, or one its platform adds).
    evidence_provider: str = "configfs-tsm"
    #: The Azure CVM's vTPM, as tpm2-tss names it (``device:PATH``, or ``swtpm:host=H,port=P`` for an emulated one).
    vtpm_tcti: str = AZURE_TCTI
    #: The Azure CVM's IMDS: Azure's link-local http endpoint, or an https one.
    imds_endpoint: str = AZURE_IMDS_ENDPOINT
    #: The TCG event log of the boot (read with each evidence, so not required to exist at start).
    event_log: Path = AZURE_EVENT_LOG
    #: ACI's security context directory (VCEK chain, UVM endorsement, CCE policy); ACI names it itself.
    security_context_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("SECURETRAIN_SECURITY_CONTEXT_DIR", "UVM_SECURITY_CONTEXT_DIR")
    )

    def credential(self) -> ClosableCredential:
        from azure.identity import ManagedIdentityCredential  # noqa: PLC0415 - heavy import

        return ManagedIdentityCredential(client_id=self.managed_identity_client_id, connection_verify=self.tls_verify)

    def blob_store(self) -> BlobStore:
        """Storage as the TEE's managed identity: all a training worker needs of these settings, so building it
        loads no attestation or Key Vault client."""
        from securetrain.core.storage import BlobStore  # noqa: PLC0415 - heavy import

        return BlobStore.from_settings(self)


class DataPathSettings(Settings):
    """The trainer's data-path bounds; unset values take the defaults of
    :class:`~securetrain.tee.training.data.DataLimits` (sized from the machine's memory)."""

    data_cache_bytes: PositiveInt | None = None
    data_stream_budget_bytes: PositiveInt | None = None
    data_shards_in_flight: PositiveInt | None = None
    data_window_shards: PositiveInt | None = None
    data_checkpoint_windows: NonNegativeInt | None = None
    data_lanes: PositiveInt | None = None

    def overrides(self) -> dict[str, int]:
        """The values set, under the names of ``DataLimits``' fields."""
        return {name.removeprefix("data_"): value for name, value in self.model_dump().items() if value is not None}


class WorkerSettings(Settings):
    """How many data-parallel worker processes train one job, and how their group is kept alive."""

    #: 1: the job trains in the agent's process; N > 1: N worker processes under one launcher.
    training_workers: PositiveInt = 1
    #: How many times a group that lost a worker is restarted from the newest checkpoint before the job fails.
    training_restarts: NonNegativeInt = 2
    #: How long a worker waits for the whole group to meet (and for any collective) before it gives up.
    training_rendezvous_timeout_s: PositiveInt = 120
    #: PyTorch intra-op threads per worker; unset: the machine's cores divided among the workers.
    training_worker_threads: PositiveInt | None = None
