"""The run report route of the Secure training page: same login, runs only, storage failures named.

Reading a report that exists is covered against Azurite in tests/integration/test_monitoring.py (the blob)
and by the route's code path shared with these tests; here no storage connection is defined.
"""

from __future__ import annotations

import pytest

from tests.unit.test_plugin import SUCCEEDED_RUN, _get, api_client, token  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def _no_storage_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_SECURETRAIN_STORAGE", raising=False)


def test_the_report_needs_a_login(api_client) -> None:  # noqa: F811
    response = _get(api_client, "/securetrain/report", None, dag_id="secure_training", run_id=SUCCEEDED_RUN)
    assert response.status_code == 303 and response.headers["location"].startswith("/auth/login")


def test_an_unknown_run_has_no_report(api_client, token) -> None:  # noqa: F811
    response = _get(api_client, "/securetrain/report", token, dag_id="secure_training", run_id="manual__nope")
    assert response.status_code == 404 and "has no run" in response.text


def test_unreadable_storage_is_named_not_hidden(api_client, token) -> None:  # noqa: F811
    response = _get(api_client, "/securetrain/report", token, dag_id="secure_training", run_id=SUCCEEDED_RUN)
    assert response.status_code == 502
    assert "cannot be read" in response.text and "securetrain_storage" in response.text
