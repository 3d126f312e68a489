"""The docker-compose deployment's one-shot ``pki`` service: the trust material every container starts from.

It makes what ``securetrain stack up`` makes, with the same functions, but hands each container a tree of its
own, laid out like a state directory, holding exactly what that container needs (docs/deployment.md, "Trust
material and where it lives")::

    OUT/<service>/ca/ca.pem                        the CA certificate (never its key)
    OUT/<service>/certs/server/<service>.pem/.key  the service's TLS certificate: CN and SAN = its compose name
    OUT/trainer/certs/client/monitor.pem/.key      the trainer's health check (read-only client)
    OUT/trainer/snp-platform/                      the simulated SEV-SNP platform (private keys)
    OUT/trainer/policies/data-owner-key.pem        the data owner's public key the TEE pins (measured)
    OUT/identity/secrets/identities/*.json         every identity (the token issuer checks their secrets)
    OUT/keyvault/policies/keyvault-roles.json      role definitions and assignments
    OUT/attestation/policies/attestation-roles.json   who may manage the attestation policies (the data owner)
    OUT/attestation/policies/simulated-ark.pem     the simulated platform's root certificate, which it trusts
    OUT/airflow/certs/client/pipeline.pem/.key     Airflow's client certificate for the trainer's API
    OUT/airflow/secrets/airflow-connections.json   Airflow's Key Vault connections: the pipeline's and key
                                                   rotation's service principals (read keys; make a new
                                                   key version), for its local-filesystem secrets backend
    OUT/airflow/policies/release-policy.json       the approved release policy Airflow checks the KEK against
    OUT/data-owner/secrets/identities/data-owner.json            the identity that creates the KEK
    OUT/data-owner/policies/release-policy.json    the approved release policy it creates the KEK under
    OUT/data-owner/policies/sevsnpvm-attestation-policy.txt   the approved attestation policy it sets
    OUT/data-owner/secrets/data-owner/signing-key.pem   the owner's manifest and export-approval key
    OUT/data-owner-signing/secrets/data-owner/signing-key.pem   the same key alone, for the data owner's worker

The TEE's managed identity has no secret in any file: its host's secret is the deployment's
``SECURETRAIN_CVM_IDENTITY_HEADER``. The CA and its key stay in CA_DIR, a volume no other container mounts.

Usage: ``python pki_init.py OUT CA_DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from securetrain.core.errors import SecuretrainError
from securetrain.localstack.airflow_env import keyvault_connections
from securetrain.localstack.identities import CVM_IDENTITY, DATA_OWNER_IDENTITY, PIPELINE_IDENTITY, LocalIdentity
from securetrain.localstack.pki import LocalCA
from securetrain.localstack import data_owner
from securetrain.localstack.platform.snp_platform import SimulatedSnpPlatform
from securetrain.localstack.services.attestation import (
    attestation_policy_path,
    attestation_roles_path,
    local_attestation_policy,
    release_policy_for,
    write_attestation_roles,
)
from securetrain.localstack.services.cvm import MONITOR_IDENTITY
from securetrain.localstack.services.identity import identities_dir, stack_identities
from securetrain.localstack.services.keyvault import release_policy_path, roles_path, write_roles
from securetrain.localstack.layout import StackLayout, write_file

log = logging.getLogger("pki_init")

#: The containers that serve HTTPS, by compose service name (also the name their certificate carries).
SERVERS = ("azurite", "attestation", "identity", "keyvault", "trainer")
#: The URL tokens of the attestation service name as their issuer: release policies pin it.
ATTESTATION_URL = "https://attestation:10443"
#: Where the attestation service finds the simulated platform's root it is configured to trust.
SIMULATED_ROOT = "policies/simulated-ark.pem"
#: The services Airflow's Key Vault connections name, by their compose names.
KEYVAULT_URL, IDENTITY_URL = "https://keyvault:10800", "https://identity:10700"
#: The deployment's secret for the TEE's managed identity (compose passes it from .env).
CVM_IDENTITY_HEADER = "SECURETRAIN_CVM_IDENTITY_HEADER"


def _hand_over(source: Path, target: Path) -> None:
    """Copy a file into a container's tree, keeping its mode (0600 for keys and secrets)."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy2(source, target)


def _attach_managed_identity(path: Path, identity: LocalIdentity, header: str) -> None:
    """Make ``header`` the secret of the host the managed identity ``identity`` is attached to."""
    if identity.identity_header != header:
        dataclasses.replace(identity, identity_header=header).save(path)


def make_trust_material(out: Path, ca_dir: Path, header: str) -> None:
    """Make (or bring up to date) every container's tree under ``out``; the CA lives in ``ca_dir``; ``header``
    is the trainer's host secret for the TEE's managed identity."""
    ca = LocalCA.load_or_create(ca_dir)
    trees = {name: StackLayout(out / name) for name in (*SERVERS, "airflow", "data-owner")}
    for layout in trees.values():
        _hand_over(ca.cert_path, layout.ca_bundle)
    for name in SERVERS:
        ca.issue_server_certificate(trees[name].server_certs_dir, name, (name,))
    ca.issue_client_certificate(trees["trainer"].client_certs_dir, MONITOR_IDENTITY)
    ca.issue_client_certificate(trees["airflow"].client_certs_dir, PIPELINE_IDENTITY)

    # The token issuer holds every identity; the TEE's is attached to the trainer's host by the deployment's
    # header; Airflow gets its two service principals as connections; the data owner its own identity.
    identity_files = identities_dir(trees["identity"])
    identities = stack_identities(trees["identity"])
    _attach_managed_identity(identity_files / f"{CVM_IDENTITY}.json", identities[CVM_IDENTITY], header)
    _hand_over(identity_files / f"{DATA_OWNER_IDENTITY}.json", identities_dir(trees["data-owner"]) / f"{DATA_OWNER_IDENTITY}.json")
    connections = keyvault_connections(KEYVAULT_URL, IDENTITY_URL, "/srv/securetrain/ca/ca.pem", identities)
    write_file(trees["airflow"].secrets_dir / "airflow-connections.json",
               json.dumps(connections, indent=2, sort_keys=True).encode(), mode=0o600)  # fmt: skip
    # Role assignments name the identities' object ids: written beside them, then handed to the vault.
    write_roles(trees["identity"])
    _hand_over(roles_path(trees["identity"]), roles_path(trees["keyvault"]))
    write_attestation_roles(trees["identity"])
    _hand_over(attestation_roles_path(trees["identity"]), attestation_roles_path(trees["attestation"]))

    # The data owner's signing key stays in the owner's tree; the trainer gets the public half, before the
    # attestation policy below measures the workload that trusts it.
    data_owner.signing_key(trees["data-owner"])
    # The data owner's Airflow worker signs the manifests data_onboarding publishes: it gets that key and nothing
    # else of the owner's (not the identity that sets policies and creates the KEK).
    _hand_over(data_owner.signing_key_path(trees["data-owner"]), data_owner.signing_key_path(StackLayout(out / "data-owner-signing")))
    _hand_over(data_owner.public_key_path(trees["data-owner"]), data_owner.public_key_path(trees["trainer"]))
    # The simulated platform (its private keys) lives in the trainer's tree; the attestation service gets its
    # root certificate only. The approved attestation policy measures the workload installed in the trainer's
    # tree; the data owner sets it on the attestation service (docker/data_owner_kek.py).
    platform = SimulatedSnpPlatform.load_or_create(trees["trainer"].snp_platform_dir)
    _hand_over(platform.root_certificate_path, trees["attestation"].root / SIMULATED_ROOT)
    attestation_policy = local_attestation_policy(trees["trainer"])
    _hand_over(attestation_policy_path(trees["trainer"]), attestation_policy_path(trees["data-owner"]))
    release_policy = release_policy_for(ATTESTATION_URL, attestation_policy)
    for container in ("airflow", "data-owner"):
        write_file(release_policy_path(trees[container]), release_policy.to_bytes(), mode=0o644)
    log.info("trust material for %s is ready in %s", ", ".join(trees), out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} OUT CA_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    header = os.environ.get(CVM_IDENTITY_HEADER)
    if not header:
        print(f"pki: error: set {CVM_IDENTITY_HEADER} (see docs/deployment.md)", file=sys.stderr)
        return 2
    try:
        make_trust_material(Path(argv[1]), Path(argv[2]), header)
    except SecuretrainError as exc:
        print(f"pki: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
