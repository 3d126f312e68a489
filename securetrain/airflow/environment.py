"""Stage 1, environment preparation: containers, the KEK under the approved release policy (or, under a contract,
the contract verified and each owner's KEK bound to it), the CVM up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, Context
from securetrain.airflow.failures import fail_closed
from securetrain.airflow.settings import PipelineSettings
from securetrain.airflow.hooks.attestation import AttestationHook
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.hooks.keyvault import KeyVaultHook
from securetrain.airflow.hooks.storage import SecureStorageHook
from securetrain.airflow.locations import CONTAINERS
from securetrain.core.contracts.stages import EnvironmentResult, RunContract
from securetrain.core.errors import ConfigurationError
from securetrain.core.keyvault import KEK_NAME
from securetrain.core.release_policy import ReleasePolicy, require_documented
from securetrain.core.storage import BlobStore

def approved_release_policy(path: str | None) -> ReleasePolicy:
    """The approved release policy from ``path`` (default: ``$SECURETRAIN_RELEASE_POLICY``): the document
    :func:`securetrain.core.approved_release_policies.approved_release_policy` makes for the platform's reference
    values. A construct whose evaluation Key Vault does not document is refused (``require_documented``): the
    checks made with this policy must never approve what the vault would refuse."""
    source = path or PipelineSettings.load().release_policy
    if not source:
        raise ConfigurationError(
            "no approved release policy: pass release_policy_path or set $SECURETRAIN_RELEASE_POLICY to its JSON file"
        )
    try:
        return require_documented(ReleasePolicy.parse(Path(source).read_bytes()))
    except OSError as exc:
        raise ConfigurationError(f"cannot read the approved release policy {source}: {exc}") from None


class EnvironmentPreparationOperator(BaseOperator):
    """Makes the run's environment and checks it before anything secret moves.

    - every container the pipeline uses exists and is private;
    - the KEK ``kek_name`` exists and its latest version carries exactly the approved release policy,
      immutably (checked, never created or changed: the data owner creates KEKs; a missing KEK or one under
      any other policy fails the task, since Key Vault would release it to other TEEs);
    - under a ``contract`` (its digest) instead: the signed contract in the contracts container, every party's
      signature verified, in force, no revocation stored; each contracted dataset's KEK's latest version carries
      exactly the contract's release policy (``contract_release_policy``), immutably. The run's KEK, the one the
      TEE seals checkpoints and model to, is the first dataset's. Each refusal fails the task without retry,
      naming the party, the term or the KEK;
    - the attestation service publishes its signing keys over verified TLS;
    - the confidential VM is up (azure backend: started) and its agent answers over mutual TLS.

    Returns (XCom) an :class:`~securetrain.core.contracts.stages.EnvironmentResult`.
    """

    template_fields: Sequence[str] = ("kek_name", "release_policy_path", "contract")
    ui_color = "#d9e8f5"

    def __init__(
        self,
        *,
        kek_name: str = KEK_NAME,
        release_policy_path: str | None = None,
        contract: str | None = None,
        containers: Sequence[str] = CONTAINERS,
        storage_conn_id: str = SecureStorageHook.default_conn_name,
        keyvault_conn_id: str = KeyVaultHook.default_conn_name,
        attestation_conn_id: str = AttestationHook.default_conn_name,
        cvm_conn_id: str = ConfidentialVmHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kek_name = kek_name
        self.release_policy_path = release_policy_path
        self.contract = contract
        self.containers = tuple(containers)
        self.storage_conn_id = storage_conn_id
        self.keyvault_conn_id = keyvault_conn_id
        self.attestation_conn_id = attestation_conn_id
        self.cvm_conn_id = cvm_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        run_contract: RunContract | None = None
        with fail_closed("environment preparation"):
            with SecureStorageHook(self.storage_conn_id).blob_store() as store:
                for container in self.containers:
                    created = store.ensure_container(container)
                    self.log.info("container %s %s (private)", container, "created" if created else "exists")
                if self.contract:
                    approved, run_contract = self._check_contract(store, self.contract)
                    kek_id = next(iter(run_contract.kek_ids.values()))
            if run_contract is None:
                approved = approved_release_policy(self.release_policy_path)
                kek_id = str(KeyVaultHook(self.keyvault_conn_id).check_kek(self.kek_name, approved).id)
                self.log.info("KEK %s carries the approved release policy (sha256 %s)", kek_id, approved.sha256)
            attestation = AttestationHook(self.attestation_conn_id)
            keys = attestation.signing_key_ids()
            self.log.info("attestation service %s publishes %d signing key(s)", attestation.connection.endpoint, len(keys))
            cvm = ConfidentialVmHook(self.cvm_conn_id)
            health = cvm.start()
            self.log.info("confidential VM (%s backend) up: TEE %s, device %s", cvm.backend, health.tee_type,
                          health.device)  # fmt: skip
        return EnvironmentResult(
            kek_id=kek_id, release_policy_sha256=approved.sha256, cvm_endpoint=cvm.endpoint, tee=health.tee_type,
            containers=self.containers, **({"contract": run_contract} if run_contract is not None else {}),
        ).model_dump(mode="json")  # fmt: skip

    def _check_contract(self, store: BlobStore, digest: str) -> tuple[ReleasePolicy, RunContract]:
        """The contract ``digest`` verified, and each of its datasets' KEKs bound to it: the contract's release
        policy and what the later stages need to know of the contract."""
        from securetrain.airflow.governance import verified_contract  # noqa: PLC0415 - keeps DAG parsing light
        from securetrain.core.governance.contract import contract_release_policy  # noqa: PLC0415

        verified = verified_contract(store, digest)
        contract = verified.contract
        self.log.info("contract %s (%s) is in force, signed by %s", digest, contract.contract_id, ", ".join(verified.signers))
        policy = contract_release_policy(contract)
        vault = KeyVaultHook(self.keyvault_conn_id)
        kek_ids = {}
        for terms in contract.datasets:
            kek = vault.check_kek_at(terms.kek, policy)
            kek_ids[terms.dataset_id] = str(kek.id)
            self.log.info("KEK %s of dataset %s carries the contract's release policy (sha256 %s)", kek.id,
                          terms.dataset_id, policy.sha256)  # fmt: skip
        return policy, RunContract(digest=digest, contract_id=contract.contract_id, purpose=contract.purpose,
                                   signers=verified.signers, kek_ids=kek_ids)  # fmt: skip
