"""The alert notifiers against a real HTTPS server on loopback, with certificates from the stack's CA."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from airflow.sdk import DAG
from securetrain.airflow.failures import SecurityCheckFailed
from securetrain.airflow.notifiers import (
    LogNotifier,
    WebhookNotConfigured,
    WebhookNotifier,
    deliver_alerts,
    load_alert_thresholds,
)
from securetrain.core.alerts import Alert, AlertCategory, Severity
from securetrain.localstack.pki import LocalCA

ALERT = Alert(AlertCategory.RELEASE_DENIED, Severity.CRITICAL, "secure_training.r1.0123456789ab",
              "Key Vault refused to release the key: <policy> mismatch", count=2,
              first_seen="2026-05-01T12:00:00Z", last_seen="2026-05-01T12:00:05Z",
              evidence=({"kind": "key_denied", "details": {"key": "kek"}},))  # fmt: skip


class _Receiver(ThreadingHTTPServer):
    """Records every POST; answers with the next status from ``statuses`` (then 200)."""

    def __init__(self, context: ssl.SSLContext, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}/hooks/securetrain"


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((dict(self.headers), body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        pass


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA.load_or_create(tmp_path / "ca")


def _serve(ca: LocalCA, directory: Path, statuses: list[int] | None = None) -> Iterator[_Receiver]:
    files = ca.issue_server_certificate(directory, "webhook")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert_path, files.key_path)
    server = _Receiver(context, statuses or [])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver(ca: LocalCA, tmp_path: Path) -> Iterator[_Receiver]:
    yield from _serve(ca, tmp_path / "certs")


def test_webhook_posts_the_alert_as_json_over_verified_tls(receiver: _Receiver, ca: LocalCA) -> None:
    assert WebhookNotifier(url=receiver.url, ca_bundle=ca.cert_path).send(ALERT) is True
    ((headers, body),) = receiver.requests
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"source": "securetrain", "alert": ALERT.to_json()}


def test_webhook_takes_url_ca_and_token_from_the_airflow_connection(
    receiver: _Receiver, ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = {"conn_type": "http", "host": receiver.url, "password": "hook-token",
                  "extra": {"ca_bundle": str(ca.cert_path)}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERT_HOOK", json.dumps(connection))
    assert WebhookNotifier(conn_id="test_alert_hook").send(ALERT) is True
    ((headers, _),) = receiver.requests
    assert headers["Authorization"] == "Bearer hook-token"


def test_webhook_retries_server_errors_and_gives_up_on_client_errors(ca: LocalCA, tmp_path: Path) -> None:
    for server in _serve(ca, tmp_path / "certs", statuses=[503, 502]):
        assert WebhookNotifier(url=server.url, ca_bundle=ca.cert_path, attempts=3).send(ALERT) is True
        assert len(server.requests) == 3
    for server in _serve(ca, tmp_path / "certs", statuses=[400]):
        assert WebhookNotifier(url=server.url, ca_bundle=ca.cert_path, attempts=3).send(ALERT) is False
        assert len(server.requests) == 1


def test_webhook_refuses_a_server_the_ca_did_not_certify(receiver: _Receiver, tmp_path: Path, caplog) -> None:
    other = LocalCA.load_or_create(tmp_path / "other-ca")
    with caplog.at_level(logging.ERROR):
        assert WebhookNotifier(url=receiver.url, ca_bundle=other.cert_path).send(ALERT) is False
    assert receiver.requests == []
    assert "TLS verification" in caplog.text


def test_webhook_never_raises_when_unreachable_or_unconfigured(ca: LocalCA, caplog) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    notifier = WebhookNotifier(url=f"https://127.0.0.1:{port}/", ca_bundle=ca.cert_path, attempts=2, timeout_s=1)
    with caplog.at_level(logging.WARNING):
        assert notifier.send(ALERT) is False
        assert WebhookNotifier(conn_id="no_such_connection").send(ALERT) is False
    assert "after 2 attempts" in caplog.text and "no_such_connection" in caplog.text


def test_webhook_refuses_plain_http() -> None:
    with pytest.raises(WebhookNotConfigured, match="not https"):
        WebhookNotifier(url="http://127.0.0.1:9/hook")


def test_log_notifier_writes_one_structured_line_at_the_alert_level(caplog) -> None:
    warning = Alert(AlertCategory.TASK_FAILED, Severity.WARNING, None, "task train failed")
    with caplog.at_level(logging.INFO, logger="securetrain.airflow.notifiers"):
        deliver_alerts([ALERT, warning], [LogNotifier()])
    critical, warned = caplog.records
    assert critical.levelno == logging.ERROR and warned.levelno == logging.WARNING
    prefix, payload = critical.getMessage().split(" ", 1)
    assert prefix == "securetrain-alert" and json.loads(payload) == ALERT.to_json()


def test_as_a_failure_callback_the_notifier_alerts_on_the_failed_task(receiver: _Receiver, ca: LocalCA) -> None:
    dag = DAG(dag_id="secure_training", schedule=None)
    context = {"dag": dag, "run_id": "manual__2026-05-01", "ti": types.SimpleNamespace(task_id="train"),
               "exception": SecurityCheckFailed("the training job failed: KeyReleaseDenied: policy")}  # fmt: skip
    WebhookNotifier(url=receiver.url, ca_bundle=ca.cert_path)(context)
    ((_, body),) = receiver.requests
    alert = json.loads(body)["alert"]
    assert alert["category"] == "release_denied" and alert["severity"] == "critical"
    assert alert["run_id"].startswith("secure_training.manual__2026-05-01.")
    assert "task train" in alert["summary"]


def test_thresholds_come_from_the_airflow_variable_before_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURETRAIN_ALERT_THRESHOLDS", '{"access_denied_window_s": 9}')
    monkeypatch.delenv("AIRFLOW_VAR_SECURETRAIN_ALERT_THRESHOLDS", raising=False)
    assert load_alert_thresholds().access_denied_window_s == 9
    monkeypatch.setenv("AIRFLOW_VAR_SECURETRAIN_ALERT_THRESHOLDS", '{"access_denied_count": 7}')
    assert load_alert_thresholds().access_denied_count == 7
