"""The Airflow UI in a browser: log in, trigger ``secure_training`` through its trigger form, wait for the
run to succeed, and read its attestation and model version on the Secure training page.

Airflow runs as ``securetrain airflow standalone`` against the session's local stack, on free ports.
The browser is Debian's ``chromium`` driven by Playwright (never a downloaded browser).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from securetrain.localstack.airflow_env import ADMIN_USER, airflow_environment, read_admin_password
from tests.conftest import LocalStack, free_ports

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DAG_ID = "secure_training"
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 360


@dataclass(frozen=True)
class RunningAirflow:
    """``airflow standalone`` serving the UI at ``url``."""

    url: str
    password: str
    log: Path


def _wait_for_dag(url: str, password: str, process: subprocess.Popen, log: Path) -> None:
    """Wait until the API server answers and the dag-processor has parsed the DAG."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"airflow standalone exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            token = requests.post(
                f"{url}auth/token", json={"username": ADMIN_USER, "password": password}, timeout=5
            ).json()["access_token"]
            dag = requests.get(f"{url}api/v2/dags/{DAG_ID}", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            if dag.status_code == 200:
                return
        except (requests.RequestException, KeyError, ValueError):
            pass
        time.sleep(1)
    pytest.fail(f"{DAG_ID} did not appear in Airflow within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def airflow_ui(local_stack: LocalStack, onboarded_dataset: Path, tmp_path: Path) -> Iterator[RunningAirflow]:
    api_port, worker_log_port, trigger_log_port = free_ports(3)
    airflow_environment(local_stack.state_dir, api_port=api_port)  # makes the admin password on first use
    password = read_admin_password(local_stack.state_dir)
    log = tmp_path / "airflow-standalone.log"
    environment = {
        **os.environ,
        # The log servers of the scheduler and the triggerer, off their fixed default ports.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
    }
    command = [
        str(Path(sys.executable).parent / "securetrain"), "airflow", "standalone",
        "--state-dir", str(local_stack.state_dir), "--port", str(api_port),
    ]  # fmt: skip
    with log.open("wb") as output:
        # Its own session: airflow standalone and every component it starts share one process group.
        process = subprocess.Popen(
            command, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{api_port}/"
        _wait_for_dag(url, password, process, log)
        yield RunningAirflow(url, password, log)
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group standalone leads, then SIGKILL whatever is left after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        process.poll()
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def test_trigger_secure_training_in_the_ui_and_read_the_secure_training_page(airflow_ui, local_stack):
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)"
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            # Assertions wait as long as actions: on a loaded 2-core machine the UI takes seconds to answer.
            expect.set_options(timeout=30_000)

            # Log in: the DAG's page sends an anonymous browser to the login form and back.
            page.goto(f"{airflow_ui.url}dags/{DAG_ID}")
            page.get_by_label("Username").fill(ADMIN_USER)
            page.get_by_label("Password").fill(airflow_ui.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"**/dags/{DAG_ID}")

            # Trigger through the trigger form (the DAG's Params), unpausing the DAG on the way.
            page.get_by_role("button", name="Trigger").first.click()
            form = page.get_by_role("dialog")
            expect(form.get_by_text("Run Parameters")).to_be_visible()
            form.get_by_role("checkbox", name=f"Unpause {DAG_ID} on trigger").check()
            form.get_by_role("button", name="Trigger").click()
            expect(form).to_be_hidden()

            run = _wait_for_run(page, airflow_ui)
            model = _api(page, airflow_ui, f"dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/"
                         "register_model/xcomEntries/return_value?deserialize=true")["value"]  # fmt: skip

            # The navigation's "Secure training" entry shows the plugin's page inside the Airflow UI.
            page.get_by_role("link", name="Secure training").click()
            secure_training = page.frame_locator("iframe")
            # Runs of every training DAG are listed; this one's row names its DAG and links to the run by both ids.
            row = secure_training.locator("tr.run", has_text=run["dag_run_id"]).filter(has_text=DAG_ID)
            expect(row.locator("td.dag-id")).to_have_text(DAG_ID)
            expect(row).to_contain_text("success")
            expect(row).to_contain_text(f"v{model['version']}")
            row.get_by_role("link").click()

            expect(secure_training.locator("#run-id")).to_have_text(run["dag_run_id"])
            expect(secure_training.locator("#dag-id")).to_have_text(DAG_ID)
            expect(secure_training.locator("#attestation")).to_contain_text(
                local_stack.env["SECURETRAIN_CVM_LAUNCH_MEASUREMENT"]
            )
            expect(secure_training.locator("#key-release")).to_contain_text(local_stack.env["SECURETRAIN_KEK_ID"])
            expect(secure_training.locator("#model")).to_contain_text(str(model["version"]))
            expect(secure_training.locator("#audit-verdict")).to_have_text("verified")
        finally:
            browser.close()


def _api(page, airflow_ui: RunningAirflow, path: str) -> dict:
    """GET from Airflow's REST API with the browser's session (its JWT cookie)."""
    response = page.request.get(f"{airflow_ui.url}api/v2/{path}")
    assert response.ok, f"GET {path}: HTTP {response.status} {response.text()}"
    return response.json()


def _wait_for_run(page, airflow_ui: RunningAirflow) -> dict:
    """The run the form triggered, once it has finished; fails the test unless it succeeded."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = _api(page, airflow_ui, f"dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=1")["dag_runs"]
        if runs and runs[0]["state"] in ("success", "failed"):
            run = runs[0]
            if run["state"] != "success":
                tasks = _api(page, airflow_ui, f"dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances")
                states = {ti["task_id"]: ti["state"] for ti in tasks["task_instances"]}
                pytest.fail(f"{run['dag_run_id']} failed: {states}\n{airflow_ui.log.read_text()[-3000:]}")
            return run
        time.sleep(2)
    pytest.fail(f"the run of {DAG_ID} did not finish within {RUN_TIMEOUT_S} s")
