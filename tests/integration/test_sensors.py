"""The sensors' checks and the hooks they use, against the real local stack: Airflow validating the TEE's
attestation itself."""

from __future__ import annotations

import json

import pytest

from securetrain.airflow.enclave import attest_now, watch_job
from securetrain.airflow.hooks.attestation import AttestationHook
from securetrain.airflow.hooks.cvm import ConfidentialVmHook
from securetrain.airflow.hooks.keyvault import KeyVaultHook
from securetrain.localstack.airflow_env import securetrain_connections
from securetrain.core.errors import SecurityViolation
from securetrain.core.keyvault import KEK_NAME
from tests.agent_process import AgentProcess, source_copy
from tests.open_connections import connections_to

pytestmark = pytest.mark.integration


@pytest.fixture
def connections(local_stack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The hooks' Airflow connections, as the local Airflow environment sets them (AIRFLOW_CONN_* variables)."""
    variables = securetrain_connections(local_stack.env, local_stack.state_dir / "stack.env")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


def test_the_stack_tee_attests_for_airflows_nonce_under_the_kek_policy(local_stack, connections) -> None:
    policy = KeyVaultHook().release_policy(local_stack.env["SECURETRAIN_KEK_ID"])
    claims = attest_now(ConfidentialVmHook(), AttestationHook(), policy)
    assert claims["x-ms-sevsnpvm-hostdata"] == local_stack.env["SECURETRAIN_CVM_HOST_DATA"]
    assert claims["x-ms-sevsnpvm-launchmeasurement"] == local_stack.env["SECURETRAIN_CVM_LAUNCH_MEASUREMENT"]


def test_the_key_vault_hook_closes_the_credential_it_signs_in_with(local_stack, connections) -> None:
    # A task goes on after reading the KEK (it attests, then waits for the job): a credential left open would keep
    # its connection to the identity endpoint for as long, and a server being stopped waits for it.
    authority = local_stack.env["SECURETRAIN_IDENTITY_ENDPOINT"]
    earlier = connections_to(authority)
    hook = KeyVaultHook()
    with hook.client() as client:
        client.get_key(KEK_NAME)
        assert connections_to(authority) - earlier, "the credential kept no connection to the identity service"
    assert not connections_to(authority) - earlier
    hook.release_policy(local_stack.env["SECURETRAIN_KEK_ID"])
    assert not connections_to(authority) - earlier


def test_a_changed_trainer_is_refused_by_the_attestation_check(local_stack, connections, tmp_path, monkeypatch) -> None:
    code_root = tmp_path / "code"
    workload = source_copy(code_root) / "tee" / "workload.py"
    workload.write_text(workload.read_text() + "\n# changed\n")
    agent = AgentProcess(local_stack, tmp_path, code_root=code_root)
    agent.start()
    connection = json.loads(connections["AIRFLOW_CONN_SECURETRAIN_CVM"])
    monkeypatch.setenv("AIRFLOW_CONN_SECURETRAIN_CVM", json.dumps({**connection, "host": f"https://127.0.0.1:{agent.port}"}))
    try:
        policy = KeyVaultHook().release_policy(local_stack.env["SECURETRAIN_KEK_ID"])
        with pytest.raises(SecurityViolation, match="(?i)host.?data"):
            attest_now(ConfidentialVmHook(), AttestationHook(), policy)
    finally:
        agent.stop()


def test_the_health_watch_waits_for_a_job_not_yet_submitted_and_flags_a_wrong_tee(local_stack, connections) -> None:
    waiting = watch_job(ConfidentialVmHook(), "0" * 32, expected_tee="sev-snp-simulated", max_attestation_age_s=60)
    assert not waiting.done and waiting.security_event is None and waiting.job_state is None
    wrong = watch_job(ConfidentialVmHook(), "0" * 32, expected_tee="tdx", max_attestation_age_s=60)
    assert "not 'tdx'" in (wrong.security_event or "")
