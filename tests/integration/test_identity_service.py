"""The Entra ID stand-in through azure-identity's own credentials: ClientSecretCredential for an application,
ManagedIdentityCredential (IDENTITY_ENDPOINT/IDENTITY_HEADER) for the TEE's managed identity."""

from __future__ import annotations

import jwt
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential, ManagedIdentityCredential

from securetrain.localstack.identities import LOCAL_TENANT
from securetrain.localstack.services.identity import stack_identities
from securetrain.localstack.standins.identity.app import token_issuer

pytestmark = pytest.mark.integration

VAULT = "https://vault.azure.net/.default"


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def client_secret_credential(local_stack, identity: str, secret: str | None = None) -> ClientSecretCredential:
    application = stack_identities(local_stack.layout)[identity]
    return ClientSecretCredential(LOCAL_TENANT, application.client_id, secret or application.client_secret or "",
                                  authority=local_stack.env["SECURETRAIN_IDENTITY_ENDPOINT"],
                                  disable_instance_discovery=True, connection_verify=str(local_stack.ca_bundle))  # fmt: skip


def test_an_application_signs_in_with_client_secret_credential(local_stack) -> None:
    token = client_secret_credential(local_stack, "pipeline").get_token(VAULT)
    issued = claims(token.token)
    pipeline = stack_identities(local_stack.layout)["pipeline"]
    assert issued["iss"] == token_issuer(LOCAL_TENANT) and issued["aud"] == "https://vault.azure.net"
    assert issued["oid"] == pipeline.object_id and issued["appid"] == pipeline.client_id and issued["tid"] == LOCAL_TENANT


def test_a_wrong_secret_and_a_managed_identitys_client_id_get_no_token(local_stack) -> None:
    with pytest.raises(ClientAuthenticationError, match="unknown client_id or wrong client_secret"):
        client_secret_credential(local_stack, "pipeline", secret="guessed").get_token(VAULT)
    # The TEE's identity has no secret anyone holds: no client-credentials sign-in works for it.
    with pytest.raises(ClientAuthenticationError, match="unknown client_id or wrong client_secret"):
        client_secret_credential(local_stack, "cvm", secret="anything").get_token(VAULT)


def test_the_tees_host_gets_its_managed_identitys_token(local_stack, tee_settings) -> None:
    credential = tee_settings.credential()
    assert isinstance(credential, ManagedIdentityCredential)
    issued = claims(credential.get_token("https://storage.azure.com/.default").token)
    assert issued["oid"] == stack_identities(local_stack.layout)["cvm"].object_id
    assert issued["aud"] == "https://storage.azure.com" and issued["iss"] == token_issuer(LOCAL_TENANT)


@pytest.mark.parametrize(
    ("change", "status"),
    [({"X-IDENTITY-HEADER": "another-hosts-secret"}, 401), ({"api-version": "2017-09-01"}, 400),
     ({"client_id": "00000000-0000-0000-0000-000000000000"}, 400), ({"X-IDENTITY-HEADER": None}, 400)],
    ids=["wrong-header", "other-api-version", "identity-not-attached", "no-header"],
)
def test_the_managed_identity_endpoint_refuses_what_its_host_did_not_send(local_stack, change, status) -> None:
    managed = stack_identities(local_stack.layout)["cvm"]
    params = {"api-version": "2019-08-01", "resource": "https://vault.azure.net"}
    headers = {"X-IDENTITY-HEADER": managed.identity_header}
    for name, value in change.items():
        target = headers if name.startswith("X-") else params
        if value is None:
            target.pop(name)
        else:
            target[name] = value
    response = requests.get(f"{local_stack.env['SECURETRAIN_IDENTITY_ENDPOINT']}/msi/token", params=params,
                            headers=headers, verify=str(local_stack.ca_bundle), timeout=10)  # fmt: skip
    assert response.status_code == status, response.text
    assert "access_token" not in response.text
