"""An orchestrator that forges Azure CVM evidence gets no token: played through a real attestation service process.

Airflow carries the TEE's AzureGuest request, so it could rewrite it: put its own key where the TEE's runtime key
is (so that Key Vault would wrap the KEK to Airflow), edit a PCR value to pass as an approved workload, answer a
new challenge with old evidence, or replay an answer. The genuine evidence captured on Azure is the material; every
forgery is refused with the check it broke, and only the untouched request earns a token, once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.attestation.azure_guest import b64url
from securetrain.core.attestation.maa import AttestationRefused, AttestationServiceClient
from tests.attestation_service import attestation_service
from tests.integration.test_azure_guest_release import genuine_request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(local_stack, tmp_path_factory) -> Iterator[AttestationServiceClient]:
    """An attestation service under its default AzureGuest policy: every refusal below is a verification check's."""
    with attestation_service(local_stack, tmp_path_factory.mktemp("forged-evidence")) as url:
        yield AttestationServiceClient(url, verify=local_stack.env["SECURETRAIN_CA_BUNDLE"])


def forged(edit: Callable[[dict], None]) -> dict:
    request = genuine_request()
    info = json.loads(base64.urlsafe_b64decode(request["AttestationInfo"] + "=="))
    edit(info)
    return {"AttestationInfo": b64url(json.dumps(info).encode())}


def own_key(info: dict) -> None:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
    key = info["ClientPayload"]["runtime-key"]
    key["n"] = b64url(numbers.n.to_bytes(256, "big"))
    key["e"] = b64url(numbers.e.to_bytes(3, "big"))


def edited_pcr(info: dict) -> None:
    info["TpmInfo"]["PCRs"][7]["Digest"] = base64.b64encode(bytes(32)).decode()


def fresh_nonce(info: dict) -> None:
    info["ClientPayload"]["nonce"] = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("edit", "check"),
    [(own_key, "user-data-key"), (edited_pcr, "pcr-digest"), (fresh_nonce, "quote-nonce")],
    ids=["airflow-substitutes-its-key", "a-pcr-value-edited", "old-evidence-for-a-new-nonce"],
)
def test_forged_evidence_earns_no_token(service, edit, check) -> None:
    with pytest.raises(AttestationRefused) as refused:
        service.attest_azure_guest(forged(edit))
    assert check in str(refused.value)


def test_the_untouched_request_earns_one_token_and_its_replay_none(service) -> None:
    assert service.attest_azure_guest(genuine_request())
    with pytest.raises(AttestationRefused) as replayed:
        service.attest_azure_guest(genuine_request())
    assert "NonceReplayed" in str(replayed.value) or "replay" in str(replayed.value).lower()
