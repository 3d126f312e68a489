"""The attestation stand-in, in process: MAA's shapes, every refusal a specific 400, never a token for bad evidence;
the attestation policy in force decides, and tokens carry its MAA hash."""

from __future__ import annotations

import base64
import json
import secrets

import jwt
import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from securetrain.core.attestation.maa import report_data_for, runtime_data_bytes, sev_snp_request
from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.snp.report import GuestPolicy, TcbVersion
from securetrain.localstack.platform.snp_platform import DEFAULT_TCB, SimulatedSnpPlatform
from securetrain.localstack.services.attestation import sev_snp_policy
from securetrain.localstack.standins.attestation_service.app import ServiceConfig, create_app
from securetrain.localstack.standins.attestation_service.appraisal import DEFAULT_POLICY, EVIDENCE_TYPES
from securetrain.localstack.standins.attestation_service.policy_jws import unsigned_policy_jws
from securetrain.localstack.standins.attestation_service.policy_store import PolicyStore

MEASUREMENT = bytes.fromhex("ab" * 48)
HOST_DATA = bytes.fromhex("cd" * 32)
ISSUER = "https://attestation.securetrain.test"
URL = "/attest/SevSnpVm?api-version=2022-08-01"


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> SimulatedSnpPlatform:
    return SimulatedSnpPlatform.load_or_create(tmp_path_factory.mktemp("platform"))


@pytest.fixture(scope="module")
def other_platform(tmp_path_factory) -> SimulatedSnpPlatform:
    return SimulatedSnpPlatform.load_or_create(tmp_path_factory.mktemp("other-platform"))


@pytest.fixture(scope="module")
def policy() -> str:
    """The attestation policy in force: the local stack's kind, for this test's measurement and HOST_DATA."""
    return sev_snp_policy({MEASUREMENT}, {HOST_DATA}, DEFAULT_TCB)


def service(state_dir, platform, policy: str | None, **changes) -> TestClient:
    """The service with ``policy`` in force (as a previous set through the API left it), trusting ``platform``.

    Policy management needs an access token from an identity service, which this in-process test has not:
    its endpoints are exercised against the running stack (tests/integration/test_attestation_policy.py)."""
    if policy is not None:
        PolicyStore(state_dir / "policies", EVIDENCE_TYPES, DEFAULT_POLICY).set("SevSnpVm", unsigned_policy_jws(policy))
    settings = {
        "issuer": ISSUER, "state_dir": state_dir, "additional_roots": (platform.root,),
        "identity_authority": "https://identity.invalid/tenant", "identity_issuer": "https://sts.windows.net/tenant/",
        "ca_bundle": state_dir / "ca.pem", "roles_file": state_dir / "roles.json",
    }  # fmt: skip
    config = ServiceConfig(**{**settings, **changes})
    return TestClient(create_app(config))


@pytest.fixture
def client(tmp_path, platform, policy) -> TestClient:
    return service(tmp_path / "maa", platform, policy)


def evidence_body(platform, *, nonce=None, runtime=None, bound_runtime=None, **report_fields) -> dict:
    """A request as the TEE builds it. ``bound_runtime`` is what REPORT_DATA binds, if not the runtime sent."""
    nonce = nonce if nonce is not None else secrets.token_hex(16)
    runtime = runtime if runtime is not None else {"keys": [{"kid": "tee", "kty": "RSA", "n": "AQAB", "e": "AQAB"}], "nonce": nonce}
    data = runtime_data_bytes(runtime)
    bound = runtime_data_bytes(bound_runtime) if bound_runtime is not None else data
    fields = {"measurement": MEASUREMENT, "host_data": HOST_DATA, **report_fields}
    evidence = platform.report(report_data=report_data_for(bound), **fields)
    return sev_snp_request(evidence.report, evidence.vcek_chain_pem, data, nonce)


def published_key(client, kid):
    keys = {k["kid"]: k for k in client.get("/certs").json()["keys"]}
    cert = x509.load_der_x509_certificate(base64.b64decode(keys[kid]["x5c"][0]))
    return cert.public_key()


def decode(client, token):
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, published_key(client, kid), algorithms=["RS256"], issuer=ISSUER)


def test_metadata_and_certs_have_maas_shape(client):
    meta = client.get("/.well-known/openid-configuration").json()
    assert meta["issuer"] == ISSUER and meta["jwks_uri"] == f"{ISSUER}/certs"
    (key,) = client.get("/certs").json()["keys"]
    assert {"kid", "kty", "x5c"} <= set(key) and key["kty"] == "RSA"


def test_simulated_report_earns_a_token_with_maas_claims(client, platform, policy):
    body = evidence_body(platform, nonce="job-nonce-1")
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    claims = decode(client, response.json()["token"])
    assert claims["x-ms-attestation-type"] == "sevsnpvm"
    assert claims["x-ms-sevsnpvm-launchmeasurement"] == MEASUREMENT.hex()
    assert claims["x-ms-sevsnpvm-hostdata"] == HOST_DATA.hex()
    assert claims["x-ms-sevsnpvm-is-debuggable"] is False
    assert claims["x-ms-sevsnpvm-vmpl"] == 0
    assert claims["x-ms-sevsnpvm-snpfw-svn"] == DEFAULT_TCB.snp
    assert claims["x-ms-runtime"]["nonce"] == "job-nonce-1" and claims["x-ms-runtime"]["keys"][0]["kid"] == "tee"
    assert claims["nonce"] == "job-nonce-1"
    assert claims["x-ms-policy-hash"] == maa_policy_hash(policy)
    # The simulation says what it is, and never earns MAA's compliance status.
    assert claims["x-securetrain-platform"] == "simulated"
    assert claims["x-ms-compliance-status"] == "securetrain-simulated-cvm"
    assert claims["exp"] > claims["iat"] == claims["nbf"]


def refused(client, body, code: str, message: str = "") -> None:
    response = client.post(URL, json=body) if isinstance(body, dict) else client.post(URL, content=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert message in error["message"], error
    assert "token" not in response.json()


def test_api_version_is_required(client, platform):
    response = client.post("/attest/SevSnpVm", json=evidence_body(platform))
    assert response.status_code == 400 and "api-version" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "request body is not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"report": "***", "runtimeData": {"data": "", "dataType": "JSON"}}).encode(), "not valid base64url"),
        (json.dumps({"runtimeData": {"data": "", "dataType": "JSON"}}).encode(), "report: required field is missing"),
        (b"{" + b" " * (65 << 10) + b"}", "at most"),
    ],
)
def test_malformed_bodies(client, body, message):
    refused(client, body, "InvalidParameter", message)


def test_runtime_data_type_must_be_json(client, platform):
    body = evidence_body(platform)
    body["runtimeData"]["dataType"] = "Binary"
    refused(client, body, "InvalidParameter", "dataType")


def test_truncated_report(client, platform):
    body = evidence_body(platform)
    evidence = json.loads(base64.urlsafe_b64decode(body["report"] + "=="))
    report = base64.urlsafe_b64decode(evidence["SnpReport"] + "==")[:1000]
    evidence["SnpReport"] = base64.urlsafe_b64encode(report).rstrip(b"=").decode()
    body["report"] = base64.urlsafe_b64encode(json.dumps(evidence).encode()).rstrip(b"=").decode()
    refused(client, body, "ReportSizeError", "1184")


def test_chain_from_an_untrusted_root(client, other_platform):
    refused(client, evidence_body(other_platform), "UntrustedRoot")


def test_runtime_data_not_bound_by_report_data(client, platform):
    body = evidence_body(platform, nonce="n1", bound_runtime={"keys": [], "nonce": "n1"})
    refused(client, body, "RuntimeDataMismatch", "REPORT_DATA[0:32]")


def test_nonce_not_in_attested_runtime_data_is_stale(client, platform):
    body = evidence_body(platform, nonce="new", runtime={"keys": [], "nonce": "old"})
    refused(client, body, "NonceMismatch", "stale evidence")


def test_replayed_nonce(client, platform):
    body = evidence_body(platform, nonce="once")
    assert client.post(URL, json=body).status_code == 200
    refused(client, body, "NonceReplayed", "already used")


@pytest.mark.parametrize(
    "fields, condition, seen",
    [
        ({"policy": GuestPolicy.build(debug=True)}, '[type=="x-ms-sevsnpvm-is-debuggable", value==false]', "is true"),
        ({"tcb": TcbVersion(bootloader=3, tee=0, snp=7, microcode=115)}, '[type=="x-ms-sevsnpvm-snpfw-svn", value>=8]', "is 7"),
        ({"measurement": bytes(48)}, "x-ms-sevsnpvm-launchmeasurement", f'is "{"0" * 96}"'),
        ({"host_data": bytes(32)}, "x-ms-sevsnpvm-hostdata", f'is "{"0" * 64}"'),
        ({"vmpl": 2}, '[type=="x-ms-sevsnpvm-vmpl", value==0]', "is 2"),
        ({"policy": GuestPolicy.build(migrate_ma=True)}, '[type=="x-ms-sevsnpvm-migration-allowed", value==false]', "is true"),
    ],
)
def test_policy_refusals_name_the_rule_the_condition_and_the_value(client, platform, fields, condition, seen):
    refused(client, evidence_body(platform, **fields), "PolicyDenied", "no rule permitted the evidence: the rule at line 6")
    message = client.post(URL, json=evidence_body(platform, **fields)).json()["error"]["message"]
    assert condition in message and seen in message, message


def test_until_a_policy_is_set_the_default_permits_what_verifies_and_says_so(tmp_path, platform):
    client = service(tmp_path, platform, None)
    claims = decode(client, client.post(URL, json=evidence_body(platform, measurement=bytes(48))).json()["token"])
    assert claims["x-ms-policy-hash"] == maa_policy_hash(DEFAULT_POLICY)
    assert claims["x-ms-sevsnpvm-launchmeasurement"] == "0" * 96


def test_a_deny_rule_wins_and_issued_claims_join_the_token(tmp_path, platform):
    text = """version=1.0;
authorizationrules
{
    => permit();
    [type=="x-ms-sevsnpvm-vmpl", value>0] => deny();
};
issuancerules
{
    c:[type=="x-ms-sevsnpvm-hostdata"] => issue(type="workload", value=c.value);
    [type=="x-ms-sevsnpvm-is-debuggable", value==false] => issue(type="production", value=true);
};
"""
    client = service(tmp_path, platform, text)
    refused(client, evidence_body(platform, vmpl=1), "PolicyDenied", "denied by the rule at line 5")
    claims = decode(client, client.post(URL, json=evidence_body(platform)).json()["token"])
    assert claims["workload"] == HOST_DATA.hex() and claims["production"] is True
    assert claims["x-ms-policy-hash"] == maa_policy_hash(text)


def test_the_policy_never_decides_which_roots_are_trusted(tmp_path, platform, other_platform, policy):
    """Evidence under a root the service was not configured with is refused before any policy runs, even
    under a policy that permits everything."""
    refused(service(tmp_path / "default", platform, None), evidence_body(other_platform), "UntrustedRoot")
    amd_only = service(tmp_path / "amd", platform, policy, additional_roots=())
    refused(amd_only, evidence_body(platform), "UntrustedRoot", "AMD ARK-Milan")


def test_policy_management_needs_a_bearer_token(client):
    for method, path in (("GET", "/policies/SevSnpVm"), ("PUT", "/policies/SevSnpVm"), ("POST", "/policies/SevSnpVm:reset")):
        response = client.request(method, path, params={"api-version": "2020-10-01"}, content=b"x")
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "Unauthorized"
        assert "requires a valid JWT bearer token" in response.json()["error"]["message"]


def test_unknown_attestation_types_and_api_versions(client, platform):
    response = client.post("/attest/SgxEnclave?api-version=2022-08-01", json=evidence_body(platform))
    assert response.status_code == 400 and "SevSnpVm" in response.json()["error"]["message"]
    response = client.get("/policies/SevSnpVm", params={"api-version": "1999-01-01"})
    assert response.status_code == 400 and "2020-10-01" in response.json()["error"]["message"]


def test_every_decision_is_logged(tmp_path, policy, platform):
    client = service(tmp_path, platform, policy)
    client.post(URL, json=evidence_body(platform))
    client.post(URL, json=evidence_body(platform, measurement=bytes(48)))
    lines = [json.loads(line) for line in (tmp_path / "issuance.jsonl").read_text().splitlines()]
    assert [line["decision"] for line in lines] == ["issued", "refused"]
    assert lines[0]["measurement"] == MEASUREMENT.hex() and lines[1]["code"] == "PolicyDenied"
    assert lines[0]["policy_hash"] == lines[1]["policy_hash"] == maa_policy_hash(policy)


def test_signing_keys_persist_and_roll_over(tmp_path, policy, platform):
    from securetrain.localstack.standins.attestation_service.signing import SigningKeyStore

    first = service(tmp_path, platform, policy)
    token = first.post(URL, json=evidence_body(platform)).json()["token"]
    SigningKeyStore(tmp_path / "signing", token_lifetime=8 * 3600).roll_over()
    restarted = service(tmp_path, platform, None)
    kids = [k["kid"] for k in restarted.get("/certs").json()["keys"]]
    assert len(kids) == 2 and jwt.get_unverified_header(token)["kid"] in kids
    assert decode(restarted, token)["iss"] == ISSUER
    new_token = restarted.post(URL, json=evidence_body(platform)).json()["token"]
    assert jwt.get_unverified_header(new_token)["kid"] != jwt.get_unverified_header(token)["kid"]


def test_retired_key_leaves_certs_after_its_tokens_expire(tmp_path):
    from securetrain.localstack.standins.attestation_service.signing import SigningKeyStore

    store = SigningKeyStore(tmp_path, token_lifetime=60)
    old = store.current
    store.roll_over()
    assert old.kid in [k.kid for k in store.published()]
    assert old.kid not in [k.kid for k in store.published(now=old.created_at + 3600)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_requests_never_crash_and_never_earn_a_token(client, platform, data):
    body = evidence_body(platform)
    raw = bytearray(json.dumps(body).encode())
    if data.draw(st.booleans(), label="mutate the report's signed bytes"):
        evidence = json.loads(base64.urlsafe_b64decode(body["report"] + "=="))
        report = bytearray(base64.urlsafe_b64decode(evidence["SnpReport"] + "=="))
        for _ in range(data.draw(st.integers(1, 4))):
            report[data.draw(st.integers(0, 0x29F))] ^= data.draw(st.integers(1, 255))
        assume(report != base64.urlsafe_b64decode(evidence["SnpReport"] + "=="))  # two flips cancelled out
        evidence["SnpReport"] = base64.urlsafe_b64encode(bytes(report)).rstrip(b"=").decode()
        body["report"] = base64.urlsafe_b64encode(json.dumps(evidence).encode()).rstrip(b"=").decode()
        raw = bytearray(json.dumps(body).encode())
    else:
        sent = json.loads(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        try:
            assume(json.loads(raw) != sent)  # only white space changed, or nothing: the same request
        except ValueError:
            pass
    response = client.post(URL, content=bytes(raw), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "token" not in response.json()
