"""securetrain's Airflow plugin: the "Secure training" page in the Airflow UI, and the audit-trail listener.

The page is a FastAPI app the API server mounts at ``/securetrain``, linked from the navigation bar. It renders
on the server, every value escaped, what the runs of the training DAGs (tagged
:data:`~securetrain.airflow.dag_tags.TRAINING_TAG`) left in Airflow's metadata database, each stage's return
value read back as its stage's model; and it serves a run's HTML report from blob storage under a content
security policy. Airflow authenticates no app a plugin mounts, so every route depends on Airflow's own user
dependency, and what a user may read is decided per DAG by the auth manager. docs/airflow.md ("The "Secure
training" page") says what each part shows and why it is safe.
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.batch_apis import IsAuthorizedDagRequest
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, get_user
from airflow.models.dag import DagModel, DagTag
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XCOM_RETURN_KEY, XComModel
from airflow.plugins_manager import AirflowPlugin
from securetrain.airflow.dag_tags import TRAINING_TAG
from securetrain.airflow.listener import audit_trail_listener
from securetrain.airflow.stage_results import read_result
from securetrain.core.contracts.base import first_error

URL_PREFIX = "/securetrain"
#: What a user must be allowed to read of a training DAG to see its runs here: all the page shows.
READ_ENTITIES = (DagAccessEntity.RUN, DagAccessEntity.TASK_INSTANCE, DagAccessEntity.XCOM)
#: The stages of a training DAG whose return values the page reads, in the order they run.
STAGES = ("prepare_environment", "check_data_security", "train", "register_model", "audit", "cleanup")
#: How many runs the overview lists, newest first.
RUNS_SHOWN = 50
#: The attestation claims shown first, with what they mean; the page lists every other claim below them.
KEY_CLAIMS = {
    "x-ms-attestation-type": "TEE type",
    "x-ms-sevsnpvm-launchmeasurement": "launch measurement",
    "x-ms-sevsnpvm-hostdata": "host data (workload digest)",
    "iat": "issued at",
    "exp": "expires at",
}
_TIME_CLAIMS = ("iat", "exp", "nbf")

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "ui" / "templates"),
    # Every value on the page comes from DAG run parameters and task results: escape all of it.
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


@dataclass(frozen=True)
class StageResult:
    """One stage of a run: its task instance's state and times, and what it returned (if it did)."""

    task_id: str
    state: str | None
    start: datetime.datetime | None
    end: datetime.datetime | None
    result: BaseModel | None
    problem: str | None


@dataclass(frozen=True)
class RunView:
    """A run of a training DAG with the results of its stages, keyed by task id."""

    dag_id: str
    run_id: str
    state: str
    start: datetime.datetime | None
    end: datetime.datetime | None
    stages: Mapping[str, StageResult]

    def result(self, task_id: str) -> Any:
        """What stage ``task_id`` returned, as its stage's model; None when it returned nothing usable."""
        stage = self.stages.get(task_id)
        return stage.result if stage is not None else None


def _decode(task_id: str, value: Any) -> tuple[BaseModel | None, str | None]:
    """A stored XCom value as its stage's result, or why it is not one.

    Values pushed through the Task SDK are stored as JSON text, values set directly as JSON documents.
    Plain ``json`` decodes them, not Airflow's XCom decoder: that one imports and instantiates whatever
    class a value names, and the page only ever shows data.
    """
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return None, "the return value is not JSON"
    if not isinstance(value, dict):
        return None, f"the return value is a JSON {type(value).__name__}, not an object"
    try:
        return read_result(task_id, value), None
    except ValidationError as exc:
        field, reason = first_error(exc)
        return None, f"the return value is not this stage's result ({field or 'the value'}: {reason})"


def training_dag_ids(session: Session) -> list[str]:
    """The DAGs tagged :data:`~securetrain.airflow.dag_tags.TRAINING_TAG`, sorted."""
    return sorted(session.scalars(select(DagTag.dag_id).where(DagTag.name == TRAINING_TAG)))


def readable_dag_ids(user: BaseUser, dag_ids: Sequence[str], session: Session) -> list[str]:
    """Those of ``dag_ids`` whose runs, task instances and XComs ``user`` may read, as the auth manager says."""
    manager = get_auth_manager()
    teams = DagModel.get_dag_id_to_team_name_mapping(list(dag_ids), session=session)

    def requests(dag_id: str) -> list[IsAuthorizedDagRequest]:
        details = DagDetails(id=dag_id, team_name=teams.get(dag_id))
        return [{"method": "GET", "access_entity": entity, "details": details} for entity in READ_ENTITIES]

    return [dag_id for dag_id in dag_ids if manager.batch_is_authorized_dag(requests(dag_id), user=user)]


def _return_values(
    session: Session, dag_ids: Sequence[str], run_ids: Sequence[str], task_ids: Sequence[str]
) -> dict[tuple[str, str, str], Any]:
    rows = session.execute(
        select(XComModel.dag_id, XComModel.run_id, XComModel.task_id, XComModel.value).where(
            XComModel.dag_id.in_(dag_ids),
            XComModel.run_id.in_(run_ids),
            XComModel.task_id.in_(task_ids),
            XComModel.key == XCOM_RETURN_KEY,
            XComModel.map_index == -1,
        )
    )
    return {(dag_id, run_id, task_id): value for dag_id, run_id, task_id, value in rows}


def _task_instances(
    session: Session, dag_ids: Sequence[str], run_ids: Sequence[str]
) -> dict[tuple[str, str, str], TaskInstance]:
    instances = session.scalars(
        select(TaskInstance).where(
            TaskInstance.dag_id.in_(dag_ids),
            TaskInstance.run_id.in_(run_ids),
            TaskInstance.task_id.in_(STAGES),
            TaskInstance.map_index == -1,
        )
    )
    return {(ti.dag_id, ti.run_id, ti.task_id): ti for ti in instances}


def load_runs(session: Session, dag_ids: Sequence[str], run_id: str | None = None) -> list[RunView]:
    """The runs of the DAGs ``dag_ids``, newest first: the newest :data:`RUNS_SHOWN`, or those named ``run_id``."""
    query = select(DagRun).where(DagRun.dag_id.in_(dag_ids))
    if run_id is not None:
        query = query.where(DagRun.run_id == run_id)
    runs = list(session.scalars(query.order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(RUNS_SHOWN)))
    run_ids = sorted({run.run_id for run in runs})
    run_dag_ids = sorted({run.dag_id for run in runs})
    values = _return_values(session, run_dag_ids, run_ids, STAGES)
    instances = _task_instances(session, run_dag_ids, run_ids)
    views = []
    for run in runs:
        stages = {}
        for task_id in STAGES:
            ti = instances.get((run.dag_id, run.run_id, task_id))
            stored = values.get((run.dag_id, run.run_id, task_id))
            result, problem = _decode(task_id, stored) if stored is not None else (None, None)
            stages[task_id] = StageResult(
                task_id=task_id,
                state=str(ti.state) if ti is not None and ti.state is not None else None,
                start=ti.start_date if ti is not None else None,
                end=ti.end_date if ti is not None else None,
                result=result,
                problem=problem,
            )
        views.append(RunView(run.dag_id, run.run_id, str(run.state), run.start_date, run.end_date, stages))
    return views


def _time(value: datetime.datetime | None) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


def _claim(value: Any, name: str) -> str:
    """A claim as text: times as UTC dates beside their number, objects and lists as compact JSON."""
    if name in _TIME_CLAIMS and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{datetime.datetime.fromtimestamp(value, datetime.UTC):%Y-%m-%d %H:%M:%S UTC} ({value})"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _epsilon(value: float) -> str:
    """An ε as the ledger's own account prints it: as written, no exponent, no trailing zeros."""
    return format(decimal.Decimal(repr(value)).normalize(), "f")


_templates.filters.update(time=_time, claim=_claim, number=_number, epsilon=_epsilon)
_templates.globals.update(KEY_CLAIMS=KEY_CLAIMS, STAGES=STAGES, TRAINING_TAG=TRAINING_TAG)


def _page(template: str, *, status_code: int = status.HTTP_200_OK, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(template).render(**context), status_code=status_code)


app = FastAPI(
    title="Secure training",
    description="Runs of the training DAGs: attestation, key release, validation, training, model, audit.",
    # Login for every route of this app (a Starlette mount inherits none of the API server's own dependencies);
    # what a user may read is decided per DAG, in the routes.
    dependencies=[Depends(get_user)],
    # No interactive docs or schema: the app serves HTML pages, nothing to explore.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@app.exception_handler(HTTPException)
async def _login_or_error(request: Request, exc: HTTPException) -> Response:
    """Send a browser without a (valid) session to Airflow's login page, which returns it here after."""
    if exc.status_code == status.HTTP_401_UNAUTHORIZED:
        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status.HTTP_303_SEE_OTHER)
    return _page("error.html", status_code=exc.status_code, code=exc.status_code, detail=str(exc.detail))


@app.exception_handler(RequestValidationError)
async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
    """A missing or malformed query parameter, as a page that names it."""
    problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'][1:])}: {error['msg']}" for error in exc.errors())
    code = status.HTTP_422_UNPROCESSABLE_CONTENT
    return _page("error.html", status_code=code, code=code, detail=f"bad request: {problems}")


def readable_training_dag(
    user: GetUserDep, session: SessionDep, dag_id: str = Query(..., min_length=1, max_length=250)
) -> str:
    """The ``dag_id`` of the request, once the user may read it (else 403) and it is a training DAG (else 404).

    Authorization comes first, as in Airflow's REST API: a DAG the user may not read gets 403 whether or not it
    exists or trains.
    """
    if not readable_dag_ids(user, [dag_id], session):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you may not read the runs, task instances and XComs of {dag_id!r}")
    if dag_id not in training_dag_ids(session):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{dag_id!r} is not a training DAG (tagged {TRAINING_TAG!r})")
    return dag_id


ReadableTrainingDag = Annotated[str, Depends(readable_training_dag)]


def _one_run(session: Session, dag_id: str, run_id: str) -> RunView:
    runs = load_runs(session, [dag_id], run_id)
    if not runs:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{dag_id} has no run {run_id!r}")
    return runs[0]


@app.get("/", response_class=HTMLResponse)
def overview(user: GetUserDep, session: SessionDep) -> HTMLResponse:
    """Every recent run of the training DAGs the user may read: DAG, state, times, model version, audit verdict."""
    dag_ids = readable_dag_ids(user, training_dag_ids(session), session)
    return _page("overview.html", dag_ids=dag_ids, runs=load_runs(session, dag_ids))


@dataclass(frozen=True)
class ContractView:
    """The contract a run was under, as ``prepare_environment`` verified it, what the run spent, and each
    contracted dataset's privacy budget as the contract's ledger says now (``budget`` None: ``budget_problem``
    says why it could not be read or verified)."""

    digest: str
    contract_id: str
    purpose: str
    signers: tuple[str, ...]
    #: The run's DP-SGD spend (``PrivacySpent``), None when it spent none (yet).
    privacy: Any
    budget: tuple[Any, ...] | None
    budget_problem: str | None


def contract_view(run: RunView) -> ContractView | None:
    """The contract of ``run`` (None for a run without one) and the budget of each of its datasets.

    The ledger is read from storage and verified here, without a TEE: each entry's attestation token is checked
    as historical evidence against the attestation service's published keys and the contract's release policy
    (:func:`securetrain.airflow.governance.contract_budget`). A ledger that does not verify shows no numbers.
    """
    environment = run.result("prepare_environment")
    if environment is None or environment.contract is None:
        return None
    # Only this view reads storage and the attestation service: imported here, the page's module stays light.
    from airflow.exceptions import AirflowNotFoundException  # noqa: PLC0415
    from securetrain.airflow.governance import contract_budget, stored_contract  # noqa: PLC0415
    from securetrain.airflow.hooks.attestation import AttestationHook  # noqa: PLC0415
    from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415
    from securetrain.core.errors import SecuretrainError  # noqa: PLC0415
    from securetrain.core.model_provenance import published_keys  # noqa: PLC0415

    contract = environment.contract
    training = run.result("train")
    budget: tuple[Any, ...] | None = None
    problem = None
    try:
        keys_for = published_keys(AttestationHook().connection.tls_verify)
        with SecureStorageHook().blob_store() as store:
            terms = stored_contract(store, contract.digest).contract
            budget = tuple(contract_budget(store, terms, keys_for))
    except (SecuretrainError, AirflowNotFoundException) as exc:  # storage or the ledger failed, or no connection here
        problem = f"{type(exc).__name__}: {exc}"
    return ContractView(
        digest=contract.digest, contract_id=contract.contract_id, purpose=contract.purpose,
        signers=tuple(contract.signers), privacy=training.privacy if training is not None else None,
        budget=budget, budget_problem=problem,
    )  # fmt: skip


@app.get("/run", response_class=HTMLResponse)
def run_detail(session: SessionDep, dag_id: ReadableTrainingDag, run_id: str = Query(..., max_length=250)) -> HTMLResponse:
    """One run: task states, attestation claims, key release, its contract and privacy budget, dataset checks,
    training, model, audit."""
    run = _one_run(session, dag_id, run_id)
    return _page("run.html", run=run, contract=contract_view(run))


#: What a served run report may do: show its own inline styles and data: images; no script, nothing fetched.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"


@app.get("/report", response_class=HTMLResponse)
def run_report(session: SessionDep, dag_id: ReadableTrainingDag, run_id: str = Query(..., max_length=250)) -> Response:
    """One run's report (``reports/<run>/report.html``), read from blob storage."""
    from securetrain.airflow.hooks.storage import SecureStorageHook  # noqa: PLC0415 - only this route needs storage
    from securetrain.airflow.locations import REPORTS_CONTAINER, job_run_id  # noqa: PLC0415
    from airflow.exceptions import AirflowNotFoundException  # noqa: PLC0415
    from securetrain.core.errors import SecuretrainError  # noqa: PLC0415
    from securetrain.core.run_report import REPORT_BLOB  # noqa: PLC0415
    from securetrain.core.storage import BlobNotFound, ContainerNotFound  # noqa: PLC0415

    _one_run(session, dag_id, run_id)  # 404 unless the DAG has that run
    # The blob name is derived from the run, never taken from a request or a stored value.
    blob = REPORT_BLOB.format(run=job_run_id(dag_id, run_id))
    try:
        with SecureStorageHook().blob_store() as store:
            buffer = io.BytesIO()
            store.download_to(REPORTS_CONTAINER, blob, buffer)
    except (BlobNotFound, ContainerNotFound):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} has no report yet (the audit task writes it)") from None
    except (SecuretrainError, AirflowNotFoundException) as exc:  # storage failed, or no storage connection here
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"the report of run {run_id!r} cannot be read: {exc}") from None
    headers = {"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
    return HTMLResponse(buffer.getvalue(), headers=headers)


class SecuretrainPlugin(AirflowPlugin):
    """The "Secure training" page, its navigation entry, and the audit-trail listener."""

    name = "securetrain"
    listeners = [audit_trail_listener]
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Secure training"}]
    external_views = [
        {
            "name": "Secure training",
            # Relative, as Airflow asks of plugin links, so that it also works under a base path.
            "href": "securetrain/",
            "destination": "nav",
            "url_route": "secure-training",
        }
    ]
