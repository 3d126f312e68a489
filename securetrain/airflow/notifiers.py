"""Airflow notifiers that deliver securetrain's security alerts: a log line, and a JSON webhook over HTTPS.

Both serve as a task's ``on_failure_callback`` (the alert for the failed task) and for the ``audit`` task's
alerts (:func:`deliver_alerts`). Delivering an alert never raises: a failed delivery is logged at ERROR, and the
log notifier has written the alert already (docs/monitoring.md, "Notifiers").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseNotifier, Context
from securetrain.airflow.failures import SecurityCheckFailed
from securetrain.airflow.locations import job_run_id
from securetrain.core.alerts import THRESHOLDS_VARIABLE, Alert, AlertThresholds, Severity, classify_failure
from securetrain.core.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: The connection the webhook notifier posts to by default: host = the full https URL; extra ``ca_bundle``
#: (a PEM file) to trust a private CA; password, if set, is sent as a bearer token.
WEBHOOK_CONN_ID = "securetrain_alerts_webhook"
#: Seconds to connect and to wait for the response, per attempt.
WEBHOOK_TIMEOUT_S = 5.0
#: Attempts per alert; between them none, then 2 s, 4 s ... (only connection errors and 502/503/504 are retried).
WEBHOOK_ATTEMPTS = 3


class WebhookNotConfigured(ConfigurationError):
    """The webhook has no usable https URL (no connection, or not https)."""


class AlertNotifier(BaseNotifier):
    """A notifier of security alerts: :meth:`send` delivers one; as a callback it alerts on the failed task."""

    def send(self, alert: Alert) -> bool:
        """Deliver ``alert``; True if it was delivered. Never raises."""
        raise NotImplementedError

    def notify(self, context: Context) -> None:
        """As ``on_failure_callback``: the alert for the failed task in ``context``. Never raises."""
        try:
            alert = alert_for_failed_task(context)
        except Exception:  # noqa: BLE001 - a callback must not raise; the task's own log has its failure
            logger.exception("could not build the alert for a failed task")
            return
        self.send(alert)


def alert_for_failed_task(context: Context) -> Alert:
    """The alert for the task whose failure ``context`` describes (a task callback's context)."""
    error = context.get("exception")
    dag, run_id = context.get("dag"), context.get("run_id")
    run = job_run_id(dag.dag_id, run_id) if dag is not None and run_id else None
    ti = context.get("ti")
    task_id = ti.task_id if ti is not None else "(unknown task)"
    return classify_failure(
        error if isinstance(error, BaseException) else None,
        run_id=run,
        task_id=task_id,
        security_check_failed=isinstance(error, SecurityCheckFailed),
    )


class LogNotifier(AlertNotifier):
    """Writes each alert as one line of sorted JSON prefixed ``securetrain-alert``: ERROR if critical, else WARNING."""

    def send(self, alert: Alert) -> bool:
        level = logging.ERROR if alert.severity is Severity.CRITICAL else logging.WARNING
        logger.log(level, "securetrain-alert %s", json.dumps(alert.to_json(), sort_keys=True))
        return True


class WebhookNotifier(AlertNotifier):
    """POSTs each alert as JSON, ``{"source": "securetrain", "alert": {...}}``, to ``url`` or the host of connection
    ``conn_id``, over https only (docs/monitoring.md, "Notifiers": trust, token, retries)."""

    def __init__(
        self,
        *,
        url: str | None = None,
        conn_id: str = WEBHOOK_CONN_ID,
        ca_bundle: Path | None = None,
        timeout_s: float = WEBHOOK_TIMEOUT_S,
        attempts: int = WEBHOOK_ATTEMPTS,
    ) -> None:
        super().__init__()
        if url is not None:
            _require_https(url)
        if attempts < 1 or timeout_s <= 0:
            raise ValueError(f"attempts ({attempts}) and timeout_s ({timeout_s}) must be positive")
        self.url = url
        self.conn_id = conn_id
        self.ca_bundle = ca_bundle
        self.timeout_s = timeout_s
        self.attempts = attempts

    def _target(self) -> tuple[str, Path | None, str | None]:
        """(URL, CA bundle, bearer token) from the arguments or the connection."""
        if self.url is not None:
            return self.url, self.ca_bundle, None
        from airflow.sdk import BaseHook  # noqa: PLC0415 - resolved when an alert is sent, not at DAG parse

        try:
            connection = BaseHook.get_connection(self.conn_id)
        except Exception as exc:  # noqa: BLE001 - Airflow raises its own not-found type per backend
            raise WebhookNotConfigured(
                f"no alert webhook: connection {self.conn_id!r} is not defined ({type(exc).__name__}); "
                f"set AIRFLOW_CONN_{self.conn_id.upper()} with the https URL as host"
            ) from None
        url = _require_https(connection.host or "")
        extra_ca = connection.extra_dejson.get("ca_bundle")
        ca_bundle = self.ca_bundle or (Path(extra_ca) if isinstance(extra_ca, str) and extra_ca else None)
        return url, ca_bundle, connection.password or None

    def send(self, alert: Alert) -> bool:
        import requests  # noqa: PLC0415 - keeps DAG parsing light

        from securetrain.core.http import RETRY_STATUSES, HttpsSession  # noqa: PLC0415 - as requests

        try:
            url, ca_bundle, token = self._target()
        except WebhookNotConfigured as exc:
            # WARNING, not ERROR: the log notifier has the alert; this says only that no webhook is set up.
            logger.warning("alert %s not sent to a webhook: %s", alert.category, exc)
            return False
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = json.dumps({"source": "securetrain", "alert": alert.to_json()}, sort_keys=True).encode()
        try:
            with HttpsSession(str(ca_bundle) if ca_bundle else True, retries=self.attempts - 1) as session:
                response = session.post(url, data=body, headers=headers, timeout=self.timeout_s, allow_redirects=False)
        except requests.exceptions.SSLError as exc:
            logger.error("alert %s not sent: TLS verification of %s failed: %s", alert.category, url, exc)
            return False
        except requests.RequestException as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= response.status_code < 300:
                logger.info("alert %s sent to %s (HTTP %d)", alert.category, url, response.status_code)
                return True
            outcome = f"HTTP {response.status_code}"
            if response.status_code not in RETRY_STATUSES:
                logger.error("alert %s refused by %s: %s", alert.category, url, outcome)
                return False
        logger.error("alert %s not sent to %s after %d attempts: %s", alert.category, url, self.attempts, outcome)
        return False


def _require_https(url: str) -> str:
    if not url.startswith("https://"):
        raise WebhookNotConfigured(f"the alert webhook URL {url!r} is not https; alerts are sent over TLS only")
    return url


def default_notifiers() -> list[AlertNotifier]:
    """The notifiers every securetrain DAG uses: the log, and the webhook of :data:`WEBHOOK_CONN_ID`."""
    return [LogNotifier(), WebhookNotifier()]


def deliver_alerts(alerts: Iterable[Alert], notifiers: Sequence[AlertNotifier] | None = None) -> int:
    """Hand every alert to every notifier (by default :func:`default_notifiers`); the number of alerts."""
    notifiers = default_notifiers() if notifiers is None else notifiers
    count = 0
    for alert in alerts:
        count += 1
        for notifier in notifiers:
            notifier.send(alert)
    return count


def load_alert_thresholds() -> AlertThresholds:
    """The thresholds from the Airflow Variable :data:`~securetrain.core.alerts.THRESHOLDS_VARIABLE` (JSON), else
    from ``$SECURETRAIN_ALERT_THRESHOLDS``, else the defaults.

    Raises:
        AlertConfigurationError: the value set is malformed (a misconfiguration is reported, never ignored).
    """
    from airflow.sdk import Variable  # noqa: PLC0415

    text: Any = Variable.get(THRESHOLDS_VARIABLE, default=None)
    return AlertThresholds.from_json(text) if text else AlertThresholds.from_environment()
