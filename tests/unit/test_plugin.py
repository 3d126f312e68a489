"""The "Secure training" plugin, mounted in Airflow's real API server app, over a real SQLite metadata DB.

The runs and return values are made through Airflow's own models, the way a run of ``secure_training``
leaves them: a DAG file parsed and serialized by Airflow, runs created from the serialized DAG, task
instance states set, return values stored as XComs. Logging in goes through SimpleAuthManager's token
endpoint with a password file, as the UI does.
"""

from __future__ import annotations

import datetime
import json
import re
import textwrap
from collections.abc import Iterator

import pytest

from securetrain.localstack.layout import repo_root

PASSWORD = "correct horse battery staple"
SUCCEEDED_RUN = "manual__succeeded"
FAILED_RUN = "manual__2026-11-24T19:00:00+00:00"
HOSTILE_BLOB = "sealed/<script>alert(1)</script>.sealed"
LAUNCH_MEASUREMENT = "e3" * 48

# A DAG with the task ids of secure_training: the plugin reads nothing but these ids and their results.
_DAG_FILE = """
import datetime
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("secure_training", schedule=None, start_date=datetime.datetime(2026, 1, 1)):
    stages = [EmptyOperator(task_id=task_id) for task_id in
              ("prepare_environment", "check_data_security", "train", "register_model", "audit", "cleanup")]
    for upstream, downstream in zip(stages, stages[1:]):
        upstream >> downstream
"""

# Each stage's result as the stage returns it (securetrain.core.contracts.stages).
RESULTS = {
    "prepare_environment": {
        "kek_id": "https://vault.test/keys/securetrain-kek/1",
        "release_policy_sha256": "ab" * 32,
        "cvm_endpoint": "https://127.0.0.1:10600",
        "tee": "sev-snp",
        "containers": ["datasets", "models"],
    },
    "check_data_security": {
        "dataset_id": "fraud",
        "version": "v1",
        "manifest_blob": "datasets/fraud/v1/manifest.json",
        "job_datasets": [{"container": "datasets", "manifest": "fraud/v1/manifest.json"}],
        "datasets": [
            {"container": "sealed", "blob": HOSTILE_BLOB, "format": "parquet", "context": {"kind": "dataset"},
             "kek_id": "https://vault.test/keys/securetrain-kek/1", "plaintext_sha256": "cd" * 32, "size": 4096},
        ],
    },
    "train": {
        "job_id": "job-7",
        "run_id": "secure_training.manual__succeeded",
        "state": "succeeded",
        "attestation": {
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-sevsnpvm-launchmeasurement": LAUNCH_MEASUREMENT,
            "x-ms-sevsnpvm-hostdata": "5f" * 32,
            "iat": 1_790_000_000,
            "exp": 1_790_003_600,
            "x-ms-runtime": {"keys": []},
        },
        "key_release": {"kek_id": "https://vault.test/keys/securetrain-kek/1", "released_at": "2026-11-24T18:00:00Z"},
        "epochs": 2,
        "metrics": {"loss": 0.25, "accuracy": 0.91},
        "history": [{"epoch": 1, "step": 10, "loss": 0.5, "accuracy": 0.8},
                    {"epoch": 2, "step": 20, "loss": 0.25, "accuracy": 0.91}],
        "validation": None,
        "model": {"container": "models", "blob": "fraud/3.sealed"},
        "model_blob": "models/fraud/3.sealed",
        "checkpoints": ["checkpoints/job-7/2.sealed"],
        "device": "cpu",
        "tee_type": "sev-snp",
        "transitions": [{"state": "succeeded", "time": "2026-11-24T18:02:00Z"}],
        "provenance": None,
    },
    "register_model": {"name": "fraud-detector", "version": 3, "manifest_blob": "models/fraud/3.manifest.json",
                       "sealed_sha256": "12" * 32},
    "audit": {"verdict": "verified", "entries": 12, "head": "ef" * 32, "report_blob": "audit/run.json",
              "first_bad": None, "summary": "12 entries verified", "log": "securetrain-audit/audit/run.jsonl",
              "run_report": "reports/run/report.html"},
    "cleanup": {"job_cancelled": False, "deleted_blobs": 2, "cvm": "the local agent keeps running"},
}  # fmt: skip


def _create_run(
    dag, run_id: str, states: dict[str, str], results: dict[str, object], started: datetime.datetime
) -> None:
    from airflow.models.xcom import XCOM_RETURN_KEY, XComModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    with create_session() as session:
        failed = "failed" in states.values()
        run = dag.create_dagrun(
            run_id=run_id,
            run_after=started,
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST,
            state=DagRunState.FAILED if failed else DagRunState.SUCCESS,
            start_date=started,
            session=session,
        )
        run.end_date = started + datetime.timedelta(minutes=3)
        for ti in run.get_task_instances(session=session):
            ti.state = states.get(ti.task_id)
            ti.start_date, ti.end_date = started, started + datetime.timedelta(seconds=30)
        session.flush()
        for task_id, value in results.items():
            XComModel.set(XCOM_RETURN_KEY, value, dag_id=dag.dag_id, task_id=task_id, run_id=run_id, session=session)


@pytest.fixture(scope="module")
def api_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Airflow's API server app (with the plugin) over a fresh metadata DB holding two runs."""
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    dags.mkdir()
    (dags / "secure_training.py").write_text(textwrap.dedent(_DAG_FILE))
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    passwords.chmod(0o600)
    patch = pytest.MonkeyPatch()
    for name, value in {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo_root() / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "a test secret long enough for HS512: at least sixty-four bytes of it, here",
        "AIRFLOW__API__BASE_URL": "http://testserver",
    }.items():
        patch.setenv(name, value)
    from airflow import settings
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils import db
    from fastapi.testclient import TestClient

    # Airflow reads the database URL once per process: point it at this test's database, and back after.
    settings.configure_vars()
    settings.configure_orm()
    try:
        db.initdb()
        DagBundlesManager().sync_bundles_to_db()
        bag = BundleDagBag(dag_folder=dags, bundle_path=dags, bundle_name="dags-folder")
        assert not bag.import_errors
        sync_bag_to_db(bag, "dags-folder", None)
        dag = SerializedDagModel.get_dag("secure_training")
        started = datetime.datetime(2026, 11, 24, 18, 0, tzinfo=datetime.UTC)
        _create_run(dag, SUCCEEDED_RUN, dict.fromkeys(RESULTS, "success"), RESULTS, started)
        _create_run(
            dag,
            FAILED_RUN,
            {"prepare_environment": "success", "check_data_security": "success", "train": "failed",
             "register_model": "upstream_failed", "audit": "success", "cleanup": "success"},
            {"prepare_environment": RESULTS["prepare_environment"], "check_data_security": "not an object",
             "audit": {"verdict": "broken", "entries": 4, "head": "00" * 32, "report_blob": "audit/f.json",
                       "first_bad": 2, "summary": "entry 2 does not verify", "log": "securetrain-audit/audit/f.jsonl",
                       "run_report": "reports/f/report.html"}},
            started + datetime.timedelta(hours=1),
        )  # fmt: skip

        from airflow.api_fastapi.app import create_app, purge_cached_app

        with TestClient(create_app(), base_url="http://testserver") as client:
            yield client
        purge_cached_app()
    finally:
        settings.dispose_orm()
        patch.undo()
        settings.configure_vars()
        settings.configure_orm()


@pytest.fixture(scope="module")
def token(api_client) -> str:
    response = api_client.post("/auth/token", json={"username": "admin", "password": PASSWORD})
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def _get(client, path: str, token: str | None, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(path, params=params, headers=headers, follow_redirects=False)


def test_plugin_registers_the_app_and_the_navigation_link(api_client, token):
    response = api_client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    (plugin,) = [p for p in response.json()["plugins"] if p["name"] == "securetrain"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/securetrain"
    (view,) = plugin["external_views"]
    assert view["destination"] == "nav" and view["href"] == "securetrain/"


def test_without_login_the_page_sends_the_browser_to_the_login_page(api_client):
    response = _get(api_client, "/securetrain/", None)
    assert response.status_code == 303
    assert response.headers["location"] == "/auth/login?next=http%3A%2F%2Ftestserver%2Fsecuretrain%2F"


def test_a_forged_token_is_refused(api_client):
    response = _get(api_client, "/securetrain/", "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJhZG1pbiJ9.forged")
    assert response.status_code == 403
    assert "secure_training" not in response.text.replace("All runs of secure_training", "")


def test_overview_lists_runs_newest_first_with_model_and_audit(api_client, token):
    response = _get(api_client, "/securetrain/", token)
    assert response.status_code == 200
    rows = re.findall(r'<tr class="run">(.*?)</tr>', response.text, re.S)
    assert len(rows) == 2
    assert FAILED_RUN in rows[0] and "failed" in rows[0] and "broken" in rows[0]
    assert SUCCEEDED_RUN in rows[1] and "fraud-detector v3" in rows[1] and "verified" in rows[1]
    assert "2026-11-24 18:00:00 UTC" in rows[1] and "2026-11-24 18:03:00 UTC" in rows[1]
    assert 'href="run?run_id=manual__2026-11-24T19%3A00%3A00%2B00%3A00"' in rows[0]


def test_run_page_shows_every_stage_result_escaped(api_client, token):
    response = _get(api_client, "/securetrain/run", token, run_id=SUCCEEDED_RUN)
    assert response.status_code == 200
    page = response.text
    assert LAUNCH_MEASUREMENT in page
    assert "2026-09-21 14:13:20 UTC (1790000000)" in page  # iat as a date
    assert "fraud-detector" in page and "<code>3</code>" in page
    assert 'id="audit-verdict">verified<' in page
    assert "2026-11-24T18:00:00Z" in page  # the key release
    assert "0.9100" in page and "job-7" in page
    assert "<script>" not in page
    assert "sealed/&lt;script&gt;alert(1)&lt;/script&gt;.sealed" in page


def test_a_failed_run_shows_what_exists_and_why_the_rest_is_missing(api_client, token):
    page = _get(api_client, "/securetrain/run", token, run_id=FAILED_RUN).text
    assert 'id="run-state">failed<' in page
    assert "the return value is a JSON str, not an object" in page
    assert "(task <code>train</code>: failed)" in page
    assert "(task <code>register_model</code>: upstream_failed)" in page
    assert 'id="audit-verdict">broken<' in page and "(first bad entry: 2)" in page


def test_an_unknown_run_is_404(api_client, token):
    response = _get(api_client, "/securetrain/run", token, run_id="no such run")
    assert response.status_code == 404
    assert "secure_training has no run &#39;no such run&#39;" in response.text
