"""The docker-compose deployment's one-shot ``data-owner-kek`` service: the data owner sets the approved
attestation policy, then creates the KEK.

The attestation service starts with the default policy, which authorizes any verified evidence; the data owner
(the identity with the role "Attestation Contributor" there) sets the approved SevSnpVm policy through
``azure-security-attestation``, as ``securetrain stack up`` does
(:func:`securetrain.localstack.services.attestation.apply_attestation_policy`). The release policy pins that
policy's hash, so a KEK is never released under another one, whoever changes it later.

Airflow's identities cannot create a key or choose its release policy, so before Airflow's first run the data
owner's identity sets the approved attestation policy on the attestation service and makes sure the KEK
``securetrain-kek`` has a latest version released only under the approved release policy, immutably, with the
function ``securetrain stack up`` uses (:func:`securetrain.core.keyvault.create_kek_version`).
TREE is the container's share of the trust material (``docker/pki_init.py``).

Usage: ``python data_owner_kek.py TREE VAULT_URL IDENTITY_URL ATTESTATION_URL``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from azure.core.exceptions import AzureError

from securetrain.core.errors import SecuretrainError
from securetrain.core.keyvault import KEK_NAME, create_kek_version, key_client
from securetrain.core.release_policy import ReleasePolicy
from securetrain.localstack.identities import DATA_OWNER_IDENTITY, LocalIdentity, application_credential
from securetrain.localstack.services.attestation import (
    apply_attestation_policy,
    attestation_policy_path,
    policy_administration_client,
)
from securetrain.localstack.services.identity import identities_dir
from securetrain.localstack.services.keyvault import release_policy_path
from securetrain.localstack.standins.attestation_service.appraisal import SEV_SNP_VM
from securetrain.localstack.layout import StackLayout

log = logging.getLogger("data_owner_kek")


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(f"usage: {argv[0]} TREE VAULT_URL IDENTITY_URL ATTESTATION_URL", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    tree, vault_url, identity_url, attestation_url = StackLayout(Path(argv[1])), argv[2], argv[3], argv[4]
    try:
        owner = LocalIdentity.load(identities_dir(tree) / f"{DATA_OWNER_IDENTITY}.json")
        approved = ReleasePolicy.parse(release_policy_path(tree).read_bytes())
        credential = application_credential(owner, identity_url, tree.ca_bundle)
        with policy_administration_client(attestation_url, credential, tree.ca_bundle) as attestation:
            policy_hash = apply_attestation_policy(attestation, SEV_SNP_VM.name, attestation_policy_path(tree).read_text(encoding="ascii"))
        log.info("the attestation service's SevSnpVm policy is the approved one (x-ms-policy-hash %s)", policy_hash)
        with key_client(vault_url, credential, ca_bundle=tree.ca_bundle) as client:
            kek = create_kek_version(client, KEK_NAME, approved)
    except SecuretrainError as exc:
        print(f"data-owner-kek: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (AzureError, OSError, ValueError) as exc:  # ValueError: the SDK's AttestationTokenValidationException
        print(f"data-owner-kek: error: {exc}", file=sys.stderr)
        return 1
    log.info("the KEK %s is released only under the approved policy (sha256 %s)", kek.id, approved.sha256)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
