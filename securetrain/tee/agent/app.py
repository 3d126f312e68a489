"""The agent's HTTP API (FastAPI), served over mutual TLS by ``python -m securetrain.tee.agent``.

Roles come from the client certificate's common name (see :mod:`securetrain.tee.agent.tls`): ``pipeline`` may
submit, cancel and read; ``monitor`` may only read; any other certificate from the stack CA gets 403. The
endpoints, what each role may call and what each answers are in docs/trainer.md ("The agent API"); bodies and
answers are the contracts of :mod:`securetrain.core.contracts`, errors ``{"error": {"code", "message", "field"?}}``.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from securetrain.core.contracts.attestation import Attestation, AttestationChallenge, LatestAttestation
from securetrain.core.contracts.base import DocumentInvalid
from securetrain.core.contracts.health import Health
from securetrain.core.contracts.job_spec import JobSpec
from securetrain.core.contracts.jobs import JobList, JobView
from securetrain.core.errors import SecuretrainError
from securetrain.core.governance.terms import ContractViolation
from securetrain.core.json_input import JsonInputError, read_json, read_json_object
from securetrain.core.model_export import ExportNotApproved
from securetrain.core.storage import BlobNotFound, ContainerNotFound
from securetrain.tee.agent import metrics
from securetrain.tee.agent.health import GpuProbe, agent_health
from securetrain.tee.agent.exports import MAX_EXPORT_REQUEST_BYTES, ExportRequest
from securetrain.tee.agent.jobs import JobConflict, JobNotFound, JobRunner
from securetrain.tee.agent.rewrap import MAX_REQUEST_BYTES, RewrapRequest
from securetrain.tee.agent.tls import TLS_EXTENSION

log = logging.getLogger(__name__)

MAX_SPEC_BYTES = 1 << 20
MAX_CHALLENGE_BYTES = 1 << 10


class Role(enum.StrEnum):
    """What a client certificate's common name allows."""

    PIPELINE = "pipeline"
    MONITOR = "monitor"


class Forbidden(SecuretrainError):
    """The client's identity may not do this."""


def client_role(request: Request) -> Role:
    """The caller's role from its verified client certificate; :class:`Forbidden` for anyone else."""
    tls = (request.scope.get("extensions") or {}).get(TLS_EXTENSION)
    common_name = tls.get("client_cert_cn") if isinstance(tls, dict) else None
    if common_name is None:
        raise Forbidden("no verified client certificate on this connection")
    try:
        return Role(common_name)
    except ValueError:
        raise Forbidden(f"client {common_name!r} has no role on this agent (pipeline or monitor)") from None


def require_pipeline(role: Annotated[Role, Depends(client_role)]) -> Role:
    if role is not Role.PIPELINE:
        raise Forbidden(f"the {role.value} identity may only read; submitting and cancelling need pipeline")
    return role


async def job_spec_body(request: Request) -> JobSpec:
    """``POST /v1/jobs``'s body: strict JSON (:mod:`securetrain.core.json_input`), then every field checked."""
    return JobSpec.from_json(read_json(await request.body(), max_bytes=MAX_SPEC_BYTES, what="the job spec"))


async def challenge_body(request: Request) -> AttestationChallenge:
    """``POST /v1/attestation``'s body: ``{"nonce": ...}`` and nothing else."""
    return AttestationChallenge.from_json(
        read_json_object(await request.body(), max_bytes=MAX_CHALLENGE_BYTES, what="the attestation request")
    )


def _error(status: int, exc: SecuretrainError, **extra: Any) -> JSONResponse:
    error = {"code": type(exc).__name__, "message": str(exc), **extra}
    return JSONResponse(status_code=status, content={"error": error})


def create_app(runner: JobRunner, gpu: GpuProbe) -> FastAPI:
    """The API for ``runner``'s jobs."""
    app = FastAPI(title="securetrain trainer agent", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(DocumentInvalid)
    async def _bad_document(_: Request, exc: DocumentInvalid) -> JSONResponse:
        return _error(400, exc, field=exc.field)

    @app.exception_handler(JsonInputError)
    async def _bad_json(_: Request, exc: JsonInputError) -> JSONResponse:
        return _error(400, exc, **({"field": exc.field} if exc.field else {}))

    for error_type, status in ((Forbidden, 403), (JobNotFound, 404), (JobConflict, 409)):

        async def _handler(_: Request, exc: SecuretrainError, status: int = status) -> JSONResponse:
            return _error(status, exc)

        app.add_exception_handler(error_type, _handler)  # type: ignore[arg-type]

    @app.post("/v1/jobs", status_code=201, dependencies=[Depends(require_pipeline)], response_model=None)
    async def submit(spec: Annotated[JobSpec, Depends(job_spec_body)], response: Response) -> JobView | JSONResponse:
        # Nothing is queued, attested or spent before the spec passed every check (the dependency above) and,
        # under a contract, the contract's own: 400 names the term a job breaks, 424 a contract not in force.
        try:
            record, created = await run_in_threadpool(runner.submit, spec)
        except ContractViolation as exc:
            return _error(400, exc, term=exc.term)
        except JobConflict:
            raise
        except SecuretrainError as exc:
            return _error(424 if exc.security_violation else 503, exc)
        response.status_code = 201 if created else 200
        return record.view()

    @app.get("/v1/jobs", dependencies=[Depends(client_role)])
    async def list_jobs() -> JobList:
        return JobList(jobs=tuple(record.view() for record in runner.jobs()))

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(client_role)])
    async def get_job(job_id: str) -> JobView:
        return runner.get(job_id).view()

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202, dependencies=[Depends(require_pipeline)])
    async def cancel(job_id: str) -> JobView:
        return runner.cancel(job_id).view()

    @app.get("/v1/health", dependencies=[Depends(client_role)])
    async def health() -> Health:
        return agent_health(runner, gpu)

    @app.get("/v1/attestation", dependencies=[Depends(client_role)], response_model=None)
    async def attestation() -> LatestAttestation | JSONResponse:
        latest = runner.latest_attestation
        if latest is None:
            return JSONResponse(
                status_code=404,
                content={"error": {"code": "NoAttestation", "message": "this agent has not attested yet"}},
            )
        return LatestAttestation(
            token=latest.token.raw, claims=dict(latest.token.claims), job_id=runner.latest_attestation_job,
            attested_at=latest.attested_at, sequence=latest.sequence,
        )  # fmt: skip

    @app.post("/v1/attestation", dependencies=[Depends(client_role)], response_model=None)
    async def attest_challenge(challenge: Annotated[AttestationChallenge, Depends(challenge_body)]) -> Attestation | JSONResponse:
        try:
            token = await run_in_threadpool(runner.attest_challenge, challenge.nonce)
        except SecuretrainError as exc:
            # 424: the TEE's evidence or token was refused (a security verdict); 503: a service was down.
            return _error(424 if exc.security_violation else 503, exc)
        return Attestation(token=token.raw, claims=dict(token.claims), attested_at=time.time())

    @app.post("/v1/exports", dependencies=[Depends(require_pipeline)])
    async def export(request: Request) -> Response:
        # Nothing is spent on a bad request.
        export_request = ExportRequest.from_body(await request.body(), max_bytes=MAX_EXPORT_REQUEST_BYTES)
        try:
            sealed = await run_in_threadpool(runner.export_model, export_request)
        except ExportNotApproved as exc:
            return _error(403, exc)
        except (BlobNotFound, ContainerNotFound) as exc:
            return _error(404, exc)
        except SecuretrainError as exc:
            # Not 503: the client retries those, and a retry would present the spent nonce again.
            return _error(424 if exc.security_violation else 500, exc)
        return Response(content=sealed, media_type="application/octet-stream")

    @app.post("/v1/rewraps", dependencies=[Depends(require_pipeline)])
    async def rewrap(request: Request) -> JSONResponse:
        # Before any nonce is spent.
        rewrap_request = RewrapRequest.from_body(await request.body(), max_bytes=MAX_REQUEST_BYTES)
        try:
            answer = await run_in_threadpool(runner.rewrap, rewrap_request)
        except SecuretrainError as exc:
            # As for exports: not 503, which the client retries with the nonce already spent.
            return _error(424 if exc.security_violation else 500, exc)
        return JSONResponse(content=answer)

    @app.get("/metrics", dependencies=[Depends(client_role)])
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(runner), media_type=metrics.CONTENT_TYPE)

    return app
