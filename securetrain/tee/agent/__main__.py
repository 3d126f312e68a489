"""``python -m securetrain.tee.agent``: the trainer agent, serving its API over mutual TLS.

The services the agent uses, the roots it trusts, its managed identity and where its evidence comes from
(``SECURETRAIN_EVIDENCE_PROVIDER`` and what that provider reads) come from its environment
(:class:`~securetrain.tee.settings.TeeSettings`); options on the command line say how the agent itself listens.
A platform that is not hardware (the local stack's simulated confidential VM) passes its own evidence provider
to :func:`main`.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import uvicorn

from securetrain.core.errors import ConfigurationError, SecuretrainError
from securetrain.core.process_logging import configure_logging
from securetrain.tee.agent.app import create_app
from securetrain.tee.agent.health import GpuProbe
from securetrain.tee.agent.jobs import JobRunner, JobStore, TrainingFunction
from securetrain.tee.agent.tls import MutualTlsH11Protocol
from securetrain.tee.allocator import warn_if_allocator_untuned
from securetrain.tee.data_owners import DataOwnerKeys
from securetrain.tee.evidence import ConfigfsTsmProvider, EvidenceProvider
from securetrain.tee.evidence.azure_aci import AzureAciProvider
from securetrain.tee.evidence.azure_cvm import AzureCvmProvider
from securetrain.tee.evidence.nvidia_gpu import GpuEvidenceProvider
from securetrain.tee.settings import NO_GPU_PROVIDER, TeeSettings
from securetrain.tee.tee_services import attester, key_releaser

log = logging.getLogger("securetrain.tee.agent")

#: Evidence providers by name: each builds the provider from the TEE's settings and the data owner keys it trusts.
EvidenceProviders = Mapping[str, Callable[[TeeSettings, DataOwnerKeys], EvidenceProvider | AzureCvmProvider]]


def _azure_cvm(settings: TeeSettings, owners: DataOwnerKeys) -> AzureCvmProvider:
    return AzureCvmProvider(settings.vtpm_tcti, settings.imds_endpoint, event_log=settings.event_log,
                            ca_bundle=settings.ca_bundle)  # fmt: skip


def _configfs_tsm(settings: TeeSettings, owners: DataOwnerKeys) -> EvidenceProvider:
    return ConfigfsTsmProvider()


def _azure_aci(settings: TeeSettings, owners: DataOwnerKeys) -> EvidenceProvider:
    security_context_dir = settings.required("security_context_dir")
    return AzureAciProvider(ConfigfsTsmProvider(), security_context_dir)


HARDWARE_PROVIDERS: EvidenceProviders = {
    "azure-aci": _azure_aci, "azure-cvm": _azure_cvm, "configfs-tsm": _configfs_tsm,
}  # fmt: skip


#: GPU evidence providers by name (``SECURETRAIN_GPU``), each built from the TEE's settings.
GpuProviders = Mapping[str, Callable[[TeeSettings], GpuEvidenceProvider]]


def _nvml(settings: TeeSettings) -> GpuEvidenceProvider:
    from securetrain.tee.evidence.nvidia_gpu import NvmlGpuProvider  # noqa: PLC0415 - loads NVML only when configured

    return NvmlGpuProvider()


HARDWARE_GPU_PROVIDERS: GpuProviders = {"nvml": _nvml}


def gpu_evidence_provider(settings: TeeSettings, providers: GpuProviders) -> GpuEvidenceProvider | None:
    """The GPU provider ``SECURETRAIN_GPU`` names (None for ``none``); :class:`ConfigurationError` listing the known ones."""
    if settings.gpu == NO_GPU_PROVIDER:
        return None
    factory = providers.get(settings.gpu)
    if factory is None:
        raise ConfigurationError(
            f"${settings.variable('gpu')} is {settings.gpu!r}; the GPU evidence providers here are "
            f"{', '.join(sorted((NO_GPU_PROVIDER, *providers)))}"
        )
    return factory(settings)


def evidence_provider(
    settings: TeeSettings, owners: DataOwnerKeys, providers: EvidenceProviders
) -> EvidenceProvider | AzureCvmProvider:
    """The provider ``SECURETRAIN_EVIDENCE_PROVIDER`` names, built from ``settings``.

    Raises:
        ConfigurationError: no provider of that name is known here (the message lists those that are).
    """
    factory = providers.get(settings.evidence_provider)
    if factory is None:
        raise ConfigurationError(
            f"${settings.variable('evidence_provider')} is {settings.evidence_provider!r}; the evidence providers "
            f"here are {', '.join(sorted(providers))}"
        )
    return factory(settings, owners)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m securetrain.tee.agent",
        description="The confidential trainer agent: attests, obtains the KEK, trains on sealed data.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--cert", type=Path, required=True, help="the agent's TLS server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="the private key of --cert (PEM)")
    parser.add_argument(
        "--client-ca", type=Path, required=True,
        help="CA that issues client certificates; clients without one from it are refused at the handshake",
    )  # fmt: skip
    parser.add_argument("--work-dir", type=Path, required=True, help="job records (JSON, no secrets) live here")
    parser.add_argument(
        "--data-owner-key", type=Path, action="append", default=[], metavar="PEM",
        help="a data owner's Ed25519 public key (repeatable): only manifests and export approvals signed by "
        "one of these are accepted. Part of the measured configuration (HOST_DATA)",
    )  # fmt: skip
    return parser


def _training() -> TrainingFunction:
    # Loaded with the first job, not at start: torch takes seconds to import and health must answer now.
    from securetrain.tee.training import run_training  # noqa: PLC0415

    return run_training


def main(
    argv: list[str] | None = None, providers: EvidenceProviders = HARDWARE_PROVIDERS,
    gpu_providers: GpuProviders = HARDWARE_GPU_PROVIDERS,
) -> int:  # fmt: skip
    """Run the agent; ``providers`` are the evidence providers ``SECURETRAIN_EVIDENCE_PROVIDER`` chooses from,
    ``gpu_providers`` the GPU evidence providers ``SECURETRAIN_GPU`` chooses from."""
    args = _parser().parse_args(argv)
    configure_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_if_allocator_untuned()
    try:
        settings = TeeSettings.load()
        owners = DataOwnerKeys.from_files(args.data_owner_key)
        tee_attester = attester(
            settings, evidence_provider(settings, owners, providers), gpu_evidence_provider(settings, gpu_providers)
        )
        runner = JobRunner(
            JobStore(args.work_dir / "jobs"), tee_attester, key_releaser(settings), settings.blob_store(), _training,
            owners,
        )
    except SecuretrainError as exc:
        print(f"trainer agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    app = create_app(runner, GpuProbe())
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=str(args.cert),
        ssl_keyfile=str(args.key),
        ssl_ca_certs=str(args.client_ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        http=MutualTlsH11Protocol,
        lifespan="off",
        # Idle keep-alive connections of pollers must not hold a shutdown (and a restart) up.
        timeout_graceful_shutdown=3,
        log_level="info",
    )
    runner.start()
    log.info("trainer agent (%s, GPU: %s) listening on https://%s:%d", tee_attester.tee_type, runner.gpu_type or "none",
             args.host, args.port)  # fmt: skip
    try:
        uvicorn.Server(config).run()
    finally:
        runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
