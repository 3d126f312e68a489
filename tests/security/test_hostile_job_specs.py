"""A hostile orchestrator's job specs and request bodies, played against the stack's real agent and stand-ins.

Findings 1, 3 and 9 of the security review, with only what a stock Airflow holds (the ``pipeline`` client
certificate, the identities the stack hands Airflow, the stack's CA):

1. an expectation's ``row_condition`` that runs Python inside the TEE (through ``DataFrame.query``): refused
   with a 400 naming the field, and never evaluated;
3. row values through aggregates: a ``row_condition`` narrowing ``expect_column_max_to_be_between`` to one
   row is refused; without one, the maximum (a cell) and the count of a one-row range never reach the
   job record that Airflow and the monitor read;
9. bad input: deeply nested JSON, ``NaN``, ``1.0`` for an integer, duplicate keys, wrong types, on the
   agent (``/v1/jobs``, ``/v1/attestation``) and on every JSON-body endpoint of the stand-ins, answered
   400 and never 500; a refused request spends nothing (the nonce of a refused attestation request still
   works afterwards, a refused job spec queues no job).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from securetrain.core.contracts.job_spec import DatasetRef, job_id_for_run
from securetrain.core.cvm_client import CvmClient, CvmRequestRejected
from securetrain.localstack.identities import CVM_IDENTITY, LOCAL_TENANT
from securetrain.localstack.services.identity import IDENTITIES
from securetrain.tee.settings import TeeSettings
from tests.conftest import process_environment

pytestmark = pytest.mark.integration

#: Deeper than the interpreter's recursion limit: a parser that recurses raises RecursionError (a 500).
DEEP = b"[" * 20000 + b"]" * 20000
LARGEST_AREA = 2501.0  # the largest mean_area of breast-cancer: one patient's cell


def job_spec(local_stack, dataset: DatasetRef, **changes: Any) -> dict[str, Any]:
    run = f"attack__{uuid.uuid4().hex}"
    return {
        "run_id": run, "nonce": secrets.token_urlsafe(24), "kek_id": local_stack.env["SECURETRAIN_KEK_ID"],
        "datasets": [dataset.model_dump()], "columns": {"label": "label"},
        "model": {"name": "mlp", "params": {"hidden": [8]}},
        "hyperparameters": {"epochs": 1, "batch_size": 64, "learning_rate": 0.01, "seed": 7},
        "checkpoints": {"container": "checkpoints", "prefix": f"{run}/"},
        "output": {"container": "models", "blob": f"{run}/model.sealed"},
        **changes,
    }  # fmt: skip


def suite(*expectations: dict[str, Any]) -> dict[str, Any]:
    return {"name": "probe", "expectations": list(expectations)}


@pytest.fixture(scope="module")
def pipeline(local_stack) -> CvmClient:
    with local_stack.settings().agent() as client:
        yield client


@pytest.fixture(scope="module")
def monitor(local_stack) -> CvmClient:
    with local_stack.agent_client("monitor") as client:
        yield client


def post_to_agent(local_stack, path: str, body: bytes) -> requests.Response:
    """A raw request with the pipeline's certificate: the body exactly as a hostile client writes it."""
    env = local_stack.env
    return requests.post(
        f"{env['SECURETRAIN_CVM_ENDPOINT']}{path}", data=body, headers={"Content-Type": "application/json"},
        cert=(env["SECURETRAIN_CVM_PIPELINE_CERT"], env["SECURETRAIN_CVM_PIPELINE_KEY"]),
        verify=str(local_stack.ca_bundle), timeout=30,
    )  # fmt: skip


def refused(client: CvmClient, spec: dict[str, Any]) -> CvmRequestRejected:
    with pytest.raises(CvmRequestRejected) as caught:
        client.submit(spec)
    assert caught.value.status == 400
    return caught.value


def never_queued(client: CvmClient, run_id: str) -> bool:
    return all(job.job_id != job_id_for_run(run_id) for job in client.jobs())


# --- findings 1 and 3: the suite is data ---------------------------------------------------------------------


def test_a_row_condition_that_runs_python_is_refused_and_never_evaluated(local_stack, dataset_ref, pipeline, tmp_path: Path) -> None:
    marker = tmp_path / "the-tee-ran-our-code"
    payload = f"index < @pickle.sys.modules[\"builtins\"].eval(\"__import__('pathlib').Path(r'{marker}').write_text('x') or 10\")"
    spec = job_spec(local_stack, dataset_ref, expectation_suite=suite(
        {"type": "expect_column_values_to_not_be_null",
         "kwargs": {"column": "label", "row_condition": payload, "condition_parser": "pandas"}},
    ))  # fmt: skip
    error = refused(pipeline, spec)
    assert error.field == "expectation_suite.expectations[0].kwargs.row_condition"
    assert not marker.exists()
    assert never_queued(pipeline, spec["run_id"])


def test_a_single_row_probe_is_refused(local_stack, dataset_ref, pipeline) -> None:
    spec = job_spec(local_stack, dataset_ref, expectation_suite=suite(
        {"type": "expect_column_max_to_be_between",
         "kwargs": {"column": "mean_area", "min_value": 0, "row_condition": "index == 3", "condition_parser": "pandas"}},
    ))  # fmt: skip
    assert refused(pipeline, spec).field == "expectation_suite.expectations[0].kwargs.row_condition"
    assert never_queued(pipeline, spec["run_id"])


def test_aggregate_probes_without_a_row_condition_get_no_cell_back(local_stack, dataset_ref, pipeline, monitor) -> None:
    """The column's maximum is one patient's cell; a range that excludes only it counts one row. Neither leaves."""
    spec = job_spec(local_stack, dataset_ref, expectation_suite=suite(
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "mean_area", "max_value": 100}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "mean_area", "max_value": 2500}},
    ))  # fmt: skip
    job_id = pipeline.submit(spec).job_id
    deadline = time.monotonic() + 180
    while not (job := pipeline.job(job_id)).state.finished:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job.state == "failed" and job.error.code == "DataValidationFailed", job
    largest, narrow = job.validation["expectations"]
    assert largest["success"] is False and "observed_value" not in largest and "observed_value" in largest["withheld"]
    assert narrow["success"] is False and "unexpected_count" not in narrow and "unexpected_count" in narrow["withheld"]
    for view in (job, monitor.job(job_id), *pipeline.jobs()):
        assert LARGEST_AREA not in set(numbers_in(view.model_dump(mode="json")))


def numbers_in(value: Any) -> Iterator[float]:
    """Every number in a JSON value, numeric strings included (random ids may contain the digits, not the number)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers_in(item)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, str):
        try:
            yield float(value)
        except ValueError:
            return


# --- finding 9: strict input on the agent --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [DEEP, b'{"a": ' * 40 + b"1" + b"}" * 40, b"NaN", b'{"run_id": "a", "run_id": "b"}'],
    ids=["deeply-nested", "nested-beyond-the-bound", "nan-document", "duplicate-key"],
)
def test_malformed_job_specs_get_400(local_stack, body: bytes) -> None:
    response = post_to_agent(local_stack, "/v1/jobs", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "JsonInputError"


@pytest.mark.parametrize(
    ("hyperparameters", "field"),
    [
        (b'{"epochs": 1, "batch_size": 64, "learning_rate": NaN, "seed": 7}', "hyperparameters.learning_rate"),
        (b'{"epochs": 1, "batch_size": 64, "learning_rate": Infinity, "seed": 7}', "hyperparameters.learning_rate"),
        (b'{"epochs": 1, "batch_size": 64, "learning_rate": 1e400, "seed": 7}', "hyperparameters.learning_rate"),
        (b'{"epochs": 1.0, "batch_size": 64, "learning_rate": 0.01, "seed": 7}', "hyperparameters.epochs"),
        (b'{"epochs": 1, "batch_size": true, "learning_rate": 0.01, "seed": 7}', "hyperparameters.batch_size"),
    ],
)
def test_non_finite_numbers_and_non_integers_are_refused_by_field(
    local_stack, dataset_ref, pipeline, hyperparameters: bytes, field: str
) -> None:
    spec = job_spec(local_stack, dataset_ref, hyperparameters="HYPERPARAMETERS")
    body = json.dumps(spec).encode().replace(b'"HYPERPARAMETERS"', hyperparameters)
    response = post_to_agent(local_stack, "/v1/jobs", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
    assert never_queued(pipeline, spec["run_id"])


def test_a_refused_attestation_request_spends_nothing(local_stack) -> None:
    nonce = secrets.token_urlsafe(24)
    for body in (
        DEEP,
        b'{"nonce": NaN}',
        b'{"nonce": 42}',
        b'{"nonce": ["' + nonce.encode() + b'"]}',
        json.dumps({"nonce": nonce, "also": "this"}).encode(),
        b'{"nonce": "' + nonce.encode() + b'", "nonce": "' + nonce.encode() + b'"}',
    ):
        response = post_to_agent(local_stack, "/v1/attestation", body)
        assert response.status_code == 400, (body[:60], response.text)
    # The attestation service spends a nonce once: it was not spent by any refused request.
    answer = post_to_agent(local_stack, "/v1/attestation", json.dumps({"nonce": nonce}).encode())
    assert answer.status_code == 200, answer.text
    assert answer.json()["claims"]["nonce"] == nonce


# --- finding 9: strict input on the stand-ins ----------------------------------------------------------------

BAD_BODIES = {"deeply-nested": DEEP, "nan": b'{"value": NaN, "alg": "RSA-OAEP-256", "target": NaN}'}


def vault_token(local_stack, identity: str) -> str:
    if identity != CVM_IDENTITY:
        return local_stack.credential(identity).get_token("https://vault.azure.net/.default").token
    with process_environment(local_stack.tee_environment()):  # the TEE's managed identity, as its host has it
        return TeeSettings.load().credential().get_token("https://vault.azure.net/.default").token


@pytest.fixture(scope="module")
def vault_tokens(local_stack) -> dict[str, str]:
    return {identity: vault_token(local_stack, identity) for identity in IDENTITIES}


def kek_path(local_stack) -> str:
    """``/keys/NAME/VERSION`` of the stack's KEK."""
    return "/keys/" + local_stack.env["SECURETRAIN_KEK_ID"].split("/keys/", 1)[1]


VAULT_ENDPOINTS = {
    # name: (method, path from the KEK's path (None: a new key), a body of the right shape with a wrong type)
    "create": ("POST", None, {"kty": "RSA", "key_size": 2048.0}),
    "update": ("PATCH", "", {"attributes": {"enabled": "yes"}}),
    "encrypt": ("POST", "/encrypt", {"alg": ["RSA-OAEP-256"], "value": "AAAA"}),
    "decrypt": ("POST", "/decrypt", {"alg": {"RSA-OAEP-256": 1}, "value": "AAAA"}),
    "wrapkey": ("POST", "/wrapkey", {"alg": "RSA-OAEP-256", "value": 17}),
    "unwrapkey": ("POST", "/unwrapkey", {"alg": "RSA-OAEP-256", "value": ["AAAA"]}),
    "release": ("POST", "/release", {"target": {"token": "x"}}),
}


@pytest.mark.parametrize("kind", ["deeply-nested", "nan", "wrong-type"])
@pytest.mark.parametrize("endpoint", sorted(VAULT_ENDPOINTS))
def test_key_vault_refuses_malformed_bodies_with_400(local_stack, vault_tokens, endpoint: str, kind: str) -> None:
    """Whichever identity gets past authorization (Key Vault checks it first) gets a 400, never a 500."""
    method, suffix, wrong = VAULT_ENDPOINTS[endpoint]
    path = f"/keys/probe-{uuid.uuid4().hex[:12]}/create" if suffix is None else kek_path(local_stack) + suffix
    body = BAD_BODIES.get(kind) or json.dumps(wrong).encode()
    statuses = {}
    for identity, token in vault_tokens.items():
        response = requests.request(
            method, f"{local_stack.env['SECURETRAIN_KEYVAULT_URL']}{path}", params={"api-version": "7.6"}, data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            verify=str(local_stack.ca_bundle), timeout=30,
        )  # fmt: skip
        statuses[identity] = response.status_code
        assert response.status_code in (400, 403), (identity, response.status_code, response.text)
        if response.status_code == 400:
            assert response.json()["error"]["code"] == "BadParameter"
    if endpoint in ("create", "release"):
        # Someone must be allowed to create and to release keys: the body check itself was reached.
        assert 400 in statuses.values(), statuses


def test_key_vault_refuses_a_token_nested_beyond_any_parser(local_stack, vault_tokens) -> None:
    """A release target whose JWT header is nested JSON: refused, not a RecursionError."""
    import base64  # noqa: PLC0415

    header = base64.urlsafe_b64encode(b'{"alg": ' + DEEP[:20000] + b"}").rstrip(b"=").decode()
    token = f"{header}.e30.c2ln"
    statuses = [
        requests.post(
            f"{local_stack.env['SECURETRAIN_KEYVAULT_URL']}{kek_path(local_stack)}/release", params={"api-version": "7.6"},
            json={"target": token}, headers={"Authorization": f"Bearer {bearer}"}, verify=str(local_stack.ca_bundle), timeout=30,
        ).status_code
        for bearer in vault_tokens.values()
    ]  # fmt: skip
    assert all(status in (400, 403) for status in statuses) and 400 in statuses, statuses


@pytest.mark.parametrize(
    "body",
    [DEEP, b'{"report": NaN, "runtimeData": {"data": "e30", "dataType": "JSON"}}',
     b'{"report": 5, "runtimeData": {"data": "e30", "dataType": "JSON"}}',
     b'{"report": "e30", "runtimeData": ["JSON"]}', b'{"report": "e30", "report": "e30"}'],
    ids=["deeply-nested", "nan", "wrong-type", "wrong-type-nested", "duplicate-key"],
)
def test_the_attestation_service_refuses_malformed_bodies_with_400(local_stack, body: bytes) -> None:
    response = requests.post(
        f"{local_stack.env['SECURETRAIN_ATTESTATION_ENDPOINT']}/attest/SevSnpVm", params={"api-version": "2022-08-01"},
        data=body, headers={"Content-Type": "application/json"}, verify=str(local_stack.ca_bundle), timeout=30,
    )  # fmt: skip
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "InvalidParameter" and "token" not in response.json()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(DEEP, "application/json"), (b'{"grant_type": NaN}', "application/json"),
     (b'{"grant_type": "client_credentials", "client_id": ["x"]}', "application/json"),
     (b"grant_type=client_credentials&client_id=x&client_secret=y&scope=a%20b/.default", "application/x-www-form-urlencoded"),
     (b"--b\r\nContent-Disposition: form-data; name=\"grant_type\"\r\n\r\n" + DEEP, "multipart/form-data; boundary=b")],
    ids=["deeply-nested-json", "nan-json", "wrong-type-json", "unknown-client", "broken-multipart"],
)
def test_the_identity_service_refuses_malformed_token_requests(local_stack, body: bytes, content_type: str) -> None:
    """Its token endpoint takes a form (OAuth 2.0); JSON or a broken form is a 400/401 in OAuth's shape."""
    response = requests.post(
        f"{local_stack.env['SECURETRAIN_IDENTITY_ENDPOINT']}/{LOCAL_TENANT}/oauth2/v2.0/token", data=body,
        headers={"Content-Type": content_type}, verify=str(local_stack.ca_bundle), timeout=30,
    )  # fmt: skip
    assert response.status_code in (400, 401), response.text
    assert "access_token" not in response.text
