"""The "Secure training" plugin, mounted in Airflow's real API server app, over a real SQLite metadata DB.

The runs and return values are made through Airflow's own models, the way a run of a training DAG leaves
them: a DAG file parsed and serialized by Airflow, runs created from the serialized DAGs, task instance
states set, return values stored as XComs. Two training DAGs (tagged ``securetrain-training``) and one
look-alike with the same task ids but without the tag. Logging in goes through SimpleAuthManager's token
endpoint with a password file, as the UI does; the auth manager (tests/dag_scoped_auth_manager.py) lets the
user "analyst" read ``secure_retraining`` only, as a per-DAG permission would.
"""

from __future__ import annotations

import datetime
import json
import re
import textwrap
from collections.abc import Iterator

import pytest

from securetrain.airflow.dag_tags import SECURETRAIN_TAG, TRAINING_TAG
from securetrain.localstack.layout import repo_root

PASSWORD = "correct horse battery staple"
ANALYST_PASSWORD = "another horse, another staple"
SUCCEEDED_RUN = "manual__succeeded"
FAILED_RUN = "manual__2026-11-24T19:00:00+00:00"
#: A run of secure_retraining; its id is also the id of a secure_training run (ids are unique per DAG only).
RETRAINING_RUN = SUCCEEDED_RUN
LOOK_ALIKE_RUN = "manual__look_alike"
HOSTILE_BLOB = "sealed/<script>alert(1)</script>.sealed"
LAUNCH_MEASUREMENT = "e3" * 48

# DAGs with the task ids of the training workflow: the plugin reads nothing but these ids and their results.
_DAG_FILE = f"""
import datetime
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

for dag_id, tags in (("secure_training", [{SECURETRAIN_TAG!r}, {TRAINING_TAG!r}]),
                     ("secure_retraining", [{SECURETRAIN_TAG!r}, {TRAINING_TAG!r}]),
                     ("look_alike", [{SECURETRAIN_TAG!r}])):
    with DAG(dag_id, schedule=None, start_date=datetime.datetime(2026, 1, 1), tags=tags):
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

#: A run under a contract: its digest, id, purpose and signers, and the ε the run spent.
CONTRACT_RUN = "manual__under_contract"
CONTRACT_DIGEST = "9a" * 32
CONTRACT_RESULTS = {
    **RESULTS,
    "prepare_environment": {**RESULTS["prepare_environment"], "contract": {
        "digest": CONTRACT_DIGEST, "contract_id": "fraud-pooled-2026",
        "purpose": "Two banks pool <b>fraud</b> labels for one classifier.",
        "signers": ["bank-a", "bank-b", "insurer"],
        "kek_ids": {"fraud-a": "https://vault.test/keys/kek-a/1", "fraud-b": "https://vault.test/keys/kek-b/1"}}},
    "train": {**RESULTS["train"], "privacy": {
        "epsilon": 0.9871, "delta": 1e-5, "accountant": "prv", "noise_multiplier": 1.1, "sample_rate": 0.05,
        "steps": 40, "max_grad_norm": 1.0}},
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
    """Airflow's API server app (with the plugin) over a fresh metadata DB: two runs of secure_training, one of
    secure_retraining, one of the untagged look-alike."""
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    dags.mkdir()
    (dags / "training_dags.py").write_text(textwrap.dedent(_DAG_FILE))
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD, "analyst": ANALYST_PASSWORD}))
    passwords.chmod(0o600)
    patch = pytest.MonkeyPatch()
    for name, value in {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo_root() / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.dag_scoped_auth_manager.DagScopedAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,analyst:viewer",
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
        retraining = {**RESULTS, "register_model": {**RESULTS["register_model"], "version": 4}}
        _create_run(SerializedDagModel.get_dag("secure_retraining"), RETRAINING_RUN, dict.fromkeys(RESULTS, "success"),
                    retraining, started + datetime.timedelta(hours=2))  # fmt: skip
        _create_run(SerializedDagModel.get_dag("look_alike"), LOOK_ALIKE_RUN, dict.fromkeys(RESULTS, "success"), RESULTS,
                    started + datetime.timedelta(hours=3))  # fmt: skip
        _create_run(dag, SUCCEEDED_RUN, dict.fromkeys(RESULTS, "success"), RESULTS, started)
        _create_run(dag, CONTRACT_RUN, dict.fromkeys(RESULTS, "success"), CONTRACT_RESULTS,
                    started - datetime.timedelta(hours=1))  # fmt: skip
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


def _login(client, username: str, password: str) -> str:
    response = client.post("/auth/token", json={"username": username, "password": password})
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


@pytest.fixture(scope="module")
def token(api_client) -> str:
    """The admin's: may read every DAG."""
    return _login(api_client, "admin", PASSWORD)


@pytest.fixture(scope="module")
def analyst_token(api_client) -> str:
    """The analyst's: may read secure_retraining only."""
    return _login(api_client, "analyst", ANALYST_PASSWORD)


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
    assert "secure_training" not in response.text and SUCCEEDED_RUN not in response.text


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr class="run">(.*?)</tr>', page, re.S)


def test_overview_lists_the_runs_of_every_training_dag_newest_first_with_model_and_audit(api_client, token):
    response = _get(api_client, "/securetrain/", token)
    assert response.status_code == 200
    rows = _rows(response.text)
    assert len(rows) == 4  # not the look-alike's: it lacks the training tag
    assert LOOK_ALIKE_RUN not in response.text and "look_alike" not in response.text
    assert '<code class="dag">secure_retraining</code>, <code class="dag">secure_training</code>' in response.text
    assert "<code>secure_retraining</code>" in rows[0] and "fraud-detector v4" in rows[0]
    assert 'href="run?dag_id=secure_retraining&amp;run_id=manual__succeeded"' in rows[0]
    assert "<code>secure_training</code>" in rows[1] and FAILED_RUN in rows[1]
    assert "failed" in rows[1] and "broken" in rows[1]
    assert 'href="run?dag_id=secure_training&amp;run_id=manual__2026-11-24T19%3A00%3A00%2B00%3A00"' in rows[1]
    assert SUCCEEDED_RUN in rows[2] and "fraud-detector v3" in rows[2] and "verified" in rows[2]
    assert "2026-11-24 18:00:00 UTC" in rows[2] and "2026-11-24 18:03:00 UTC" in rows[2]
    assert '<span class="missing">—</span>' in rows[2].split('class="contract">', 1)[1]  # no contract
    assert CONTRACT_RUN in rows[3] and f'title="{CONTRACT_DIGEST}">fraud-pooled-2026</code> (ε 0.9871)' in rows[3]


def test_run_page_shows_every_stage_result_escaped(api_client, token):
    response = _get(api_client, "/securetrain/run", token, dag_id="secure_training", run_id=SUCCEEDED_RUN)
    assert response.status_code == 200
    page = response.text
    assert 'id="dag-id">secure_training<' in page
    assert LAUNCH_MEASUREMENT in page
    assert "2026-09-21 14:13:20 UTC (1790000000)" in page  # iat as a date
    assert "fraud-detector" in page and "<code>3</code>" in page
    assert 'id="audit-verdict">verified<' in page
    assert "2026-11-24T18:00:00Z" in page  # the key release
    assert "0.9100" in page and "job-7" in page
    assert "<script>" not in page
    assert "sealed/&lt;script&gt;alert(1)&lt;/script&gt;.sealed" in page


def test_a_run_under_a_contract_shows_it_its_signers_and_the_epsilon_spent(api_client, token):
    page = _get(api_client, "/securetrain/run", token, dag_id="secure_training", run_id=CONTRACT_RUN).text
    assert 'id="contract-id">fraud-pooled-2026<' in page and f'id="contract-digest">{CONTRACT_DIGEST}<' in page
    assert "Two banks pool &lt;b&gt;fraud&lt;/b&gt; labels" in page
    assert "<code>bank-a</code>, <code>bank-b</code>, <code>insurer</code>" in page
    assert 'id="run-epsilon">0.9871 (δ 1e-05, prv accountant)<' in page
    # The budget comes from the contract's ledger in storage, verified with the attestation service's keys; this
    # API server has no connection to either: the page says why it shows none rather than failing.
    missing = re.search(r'id="privacy-budget-missing">(.*?)</p>', page, re.S)
    assert missing and "AirflowNotFoundException" in missing.group(1) and 'id="privacy-budget"' not in page
    plain = _get(api_client, "/securetrain/run", token, dag_id="secure_training", run_id=SUCCEEDED_RUN).text
    assert 'id="contract"' not in plain


def test_the_same_run_id_in_another_training_dag_is_another_run(api_client, token):
    page = _get(api_client, "/securetrain/run", token, dag_id="secure_retraining", run_id=RETRAINING_RUN).text
    assert 'id="dag-id">secure_retraining<' in page and "<code>4</code>" in page and "<code>3</code>" not in page


def test_a_failed_run_shows_what_exists_and_why_the_rest_is_missing(api_client, token):
    page = _get(api_client, "/securetrain/run", token, dag_id="secure_training", run_id=FAILED_RUN).text
    assert 'id="run-state">failed<' in page
    assert "the return value is a JSON str, not an object" in page
    assert "(task <code>train</code>: failed)" in page
    assert "(task <code>register_model</code>: upstream_failed)" in page
    assert 'id="audit-verdict">broken<' in page and "(first bad entry: 2)" in page


def test_an_unknown_run_is_404(api_client, token):
    response = _get(api_client, "/securetrain/run", token, dag_id="secure_training", run_id="no such run")
    assert response.status_code == 404
    assert "secure_training has no run &#39;no such run&#39;" in response.text


def test_a_dag_that_is_not_a_training_dag_is_404(api_client, token):
    for dag_id in ("look_alike", "no_such_dag"):
        response = _get(api_client, "/securetrain/run", token, dag_id=dag_id, run_id=LOOK_ALIKE_RUN)
        assert response.status_code == 404, dag_id
        assert f"&#39;{dag_id}&#39; is not a training DAG (tagged &#39;securetrain-training&#39;)" in response.text
        assert LAUNCH_MEASUREMENT not in response.text


def test_a_run_page_without_its_dag_id_names_what_is_missing(api_client, token):
    response = _get(api_client, "/securetrain/run", token, run_id=SUCCEEDED_RUN)
    assert response.status_code == 422
    assert "bad request: dag_id: Field required" in response.text


def test_a_user_sees_only_the_training_dags_the_auth_manager_lets_them_read(api_client, analyst_token):
    page = _get(api_client, "/securetrain/", analyst_token).text
    rows = _rows(page)
    assert len(rows) == 1 and "<code>secure_retraining</code>" in rows[0]
    assert "secure_training" not in page and FAILED_RUN not in page
    allowed = _get(api_client, "/securetrain/run", analyst_token, dag_id="secure_retraining", run_id=RETRAINING_RUN)
    assert allowed.status_code == 200 and "<code>4</code>" in allowed.text


def test_a_dag_the_user_may_not_read_is_403_whether_or_not_it_trains_or_exists(api_client, analyst_token):
    for dag_id in ("secure_training", "look_alike", "no_such_dag"):
        for route in ("run", "report"):
            response = _get(api_client, f"/securetrain/{route}", analyst_token, dag_id=dag_id, run_id=SUCCEEDED_RUN)
            assert response.status_code == 403, (dag_id, route)
            assert f"you may not read the runs, task instances and XComs of &#39;{dag_id}&#39;" in response.text
            assert LAUNCH_MEASUREMENT not in response.text and "fraud-detector" not in response.text


def test_a_dag_built_with_training_dag_is_tagged_for_the_page():
    from securetrain.airflow.pipeline import training_dag  # noqa: PLC0415

    dag = training_dag("my_own_training", description="a user's training DAG", schedule=None, doc_md=None)
    assert {SECURETRAIN_TAG, TRAINING_TAG} <= set(dag.tags)
