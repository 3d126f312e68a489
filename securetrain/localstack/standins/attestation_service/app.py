"""The HTTP face of the attestation stand-in: MAA's endpoints, bodies, tokens and errors.

    GET  /.well-known/openid-configuration         issuer, jwks_uri
    GET  /certs                                    {"keys": [{"kid", "kty", "x5c", ...}]}
    POST /attest/SevSnpVm?api-version=2022-08-01
         200 {"token": JWT}  |  400 {"error": {"code", "message"}}
    GET  /policies/{type}?api-version=2020-10-01        200 {"token": JWT with x-ms-policy}
    PUT  /policies/{type}?api-version=2020-10-01        body: the policy JWS; 200 {"token": JWT with
                                                        x-ms-policy-result "Updated", x-ms-policy-token-hash}
    POST /policies/{type}:reset?api-version=2020-10-01  body: an empty unsigned JWS; x-ms-policy-result "Removed"
    POST /v4/attest/gpu                            NVIDIA NRAS's GPU attestation (:mod:`.gpu_attestation`), not MAA's:
                                                   tokens signed ES384 by the keys of
    GET  /.well-known/jwks.json                    {"keys": [{"kid", "kty": "EC", "crv": "P-384", "x", "y", "x5c"}]}

Attestation needs no credential. Every refusal is a 400 whose message names the failed check — the verifier's,
or the attestation policy's rule (:mod:`.appraisal`); nothing a client sends can make it answer 500 or sign a
token for evidence that failed a check. Policy management needs an Entra bearer token and a role
(:mod:`.authz`): 401 without a valid one, 403 without the role, 400 for a policy that is not valid version 1.0
(:mod:`.policy_language`). Each attestation decision, issued or refused, is appended to ``issuance.jsonl``,
each policy decision to ``policy.jsonl``, for the audit trail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from securetrain.core.attestation.policy import base64url
from securetrain.core.attestation.tokens import ES384
from securetrain.core.errors import SecuretrainError
from securetrain.core.nvidia.claims import NRAS_JWKS_PATH
from securetrain.core.snp.roots import AMD_ROOTS, TrustedRoot
from securetrain.localstack.standins.access_tokens import Caller, Unauthenticated
from securetrain.localstack.standins.attestation_service.appraisal import DEFAULT_POLICY, EVIDENCE_TYPES, token_claims
from securetrain.localstack.standins.attestation_service.authz import PolicyAction, attestation_authorizer
from securetrain.localstack.standins.attestation_service.evidence import EvidenceRefused, NonceLedger
from securetrain.localstack.standins.attestation_service.gpu_attestation import GpuVerifierConfig, attest_gpus, submods
from securetrain.localstack.standins.attestation_service.policy_evaluation import PolicyDenied
from securetrain.localstack.standins.attestation_service.policy_jws import PolicyJwsInvalid, check_reset_jws, jws_hash
from securetrain.localstack.standins.attestation_service.policy_language import MAX_POLICY_CHARS, PolicyInvalid
from securetrain.localstack.standins.attestation_service.policy_store import PolicyStore, StoredPolicy
from securetrain.localstack.standins.attestation_service.signing import SigningKeyStore, TokenSigner
from securetrain.localstack.standins.decision_log import DecisionLog
from securetrain.localstack.standins.rbac import NotPermitted

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME_S = 8 * 3600
#: The API versions of policy management (azure-security-attestation 1.0 sends 2020-10-01).
POLICY_API_VERSIONS = frozenset({"2020-10-01", "2022-08-01"})
# A policy of the largest size accepted, base64url twice (text in the payload, payload in the JWS) and framed.
MAX_POLICY_JWS_BYTES = 2 * MAX_POLICY_CHARS + 1024


@dataclass(frozen=True)
class ServiceConfig:
    """Who the service is, where it keeps its state, whose evidence it can verify, who may manage its policies."""

    issuer: str
    state_dir: Path
    #: Roots besides AMD's that evidence may chain to (the local stack's simulated platform); what they
    #: sign is verified alike and marked simulated.
    additional_roots: tuple[TrustedRoot, ...]
    #: The Entra authority whose OpenID metadata publishes the access tokens' keys, and their ``iss``.
    identity_authority: str
    identity_issuer: str
    ca_bundle: Path
    roles_file: Path
    token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S
    #: GPU roots besides NVIDIA's and reference measurements for ``/v4/attest/gpu`` (none by default).
    gpu: GpuVerifierConfig = GpuVerifierConfig()

    @property
    def trusted_roots(self) -> tuple[TrustedRoot, ...]:
        """AMD's roots, always, and the configured ones."""
        return (*AMD_ROOTS, *self.additional_roots)


class _Refused(Exception):
    """A request answered with MAA's error shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def _known(attestation_type: str, known: Iterable[str]) -> None:
    if attestation_type not in known:
        raise _Refused(400, "InvalidParameter",
                       f"attestation type {attestation_type!r} is not supported (supported: {', '.join(known)})")  # fmt: skip


def create_app(config: ServiceConfig) -> FastAPI:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = SigningKeyStore(config.state_dir / "signing", token_lifetime=config.token_lifetime_s)
    issuer = config.issuer.rstrip("/")
    signer = TokenSigner(keys, issuer, config.token_lifetime_s, jku=f"{issuer}/certs")
    # NRAS signs its tokens ES384 with keys of its own, published apart from MAA's (GET /.well-known/jwks.json).
    gpu_keys = SigningKeyStore(config.state_dir / "gpu-signing", token_lifetime=config.token_lifetime_s, algorithm=ES384)
    gpu_signer = TokenSigner(gpu_keys, issuer, config.token_lifetime_s)
    nonces = NonceLedger(config.state_dir / "nonces.sqlite", retention_s=config.token_lifetime_s)
    policies = PolicyStore(config.state_dir / "policies", EVIDENCE_TYPES, DEFAULT_POLICY)
    authorizer = attestation_authorizer(config.identity_issuer, config.identity_authority, str(config.ca_bundle),
                                        config.roles_file)  # fmt: skip
    issuance = DecisionLog(config.state_dir / "issuance.jsonl")
    policy_log = DecisionLog(config.state_dir / "policy.jsonl")
    app = FastAPI(title="securetrain attestation service (MAA-compatible)", docs_url=None, redoc_url=None)

    @app.exception_handler(_Refused)
    async def refused(_: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.status, exc.code, str(exc))

    @app.get("/.well-known/openid-configuration")
    def openid_configuration() -> dict[str, Any]:
        return {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/certs",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token", "none"],
            "claims_supported": ["x-ms-attestation-type", "x-ms-compliance-status", "x-ms-policy-hash", "nonce"],
        }

    @app.get("/certs")
    def certs() -> dict[str, Any]:
        return {"keys": [key.jwk() for key in keys.published()]}

    @app.get(NRAS_JWKS_PATH)
    def gpu_jwks() -> dict[str, Any]:
        return {"keys": [key.jwk() for key in gpu_keys.published()]}

    @app.post("/attest/{attestation_type}")
    async def attest(attestation_type: str, request: Request) -> JSONResponse:
        _known(attestation_type, EVIDENCE_TYPES)
        kind = EVIDENCE_TYPES[attestation_type]
        if request.query_params.get("api-version") != kind.api_version:
            return _error(400, "InvalidParameter", f"api-version must be {kind.api_version}")
        body = await request.body()
        policy = policies.current(kind.name).policy
        try:
            evidence = kind.verify(body, config.trusted_roots)
            claims = token_claims(evidence, policy)
            if evidence.nonce is not None:
                nonces.spend(evidence.nonce)
        except SecuretrainError as exc:
            code = exc.code if isinstance(exc, (EvidenceRefused, PolicyDenied)) else type(exc).__name__
            log.warning("attestation refused (%s): %s", code, exc)
            issuance.record(decision="refused", code=code, reason=str(exc), policy_hash=policy.hash)
            return _error(400, code, str(exc))
        token, signed = signer.sign(claims)
        issuance.record(
            decision="issued", jti=signed["jti"], kid=keys.current.kid, nonce=evidence.nonce, platform=evidence.platform,
            policy_hash=policy.hash, attestation_type=kind.name, **evidence.log_fields,
        )  # fmt: skip
        log.info("token %s issued for %s evidence under policy %s", signed["jti"], kind.name, policy.hash)
        return JSONResponse({"token": token})

    @app.post("/v4/attest/gpu")
    async def attest_gpu(request: Request) -> JSONResponse:
        try:
            attested = attest_gpus(await request.body(), config.gpu)
        except SecuretrainError as exc:
            code = exc.code if isinstance(exc, EvidenceRefused) else type(exc).__name__
            log.warning("GPU attestation refused (%s): %s", code, exc)
            issuance.record(decision="refused", code=code, reason=str(exc), attestation_type="nvidia-gpu")
            return _error(400, code, str(exc))
        detached = {name: gpu_signer.sign(claims)[0] for name, claims in attested.detached.items()}
        overall, signed = gpu_signer.sign({**attested.overall, "submods": submods(detached)})
        issuance.record(decision="issued", jti=signed["jti"], kid=gpu_keys.current.kid, attestation_type="nvidia-gpu",
                        nonce=attested.overall["eat_nonce"], platform=attested.overall["x-securetrain-platform"],
                        **attested.log_fields)  # fmt: skip
        log.info("GPU token %s issued for %d GPU(s)", signed["jti"], len(detached))
        return JSONResponse([["JWT", overall], detached])

    def authorized(request: Request, attestation_type: str, action: PolicyAction) -> Caller:
        """Check the API version, the type, the caller and its role; every refusal is logged."""
        if request.query_params.get("api-version") not in POLICY_API_VERSIONS:
            raise _Refused(400, "InvalidParameter", f"api-version must be one of {', '.join(sorted(POLICY_API_VERSIONS))}")
        _known(attestation_type, EVIDENCE_TYPES)
        try:
            caller = authorizer.authenticate(request.headers.get("authorization"))
        except Unauthenticated as exc:
            policy_log.record(decision="denied", status=401, operation=action.value, attestation_type=attestation_type,
                              identity=None, reason=str(exc))  # fmt: skip
            raise _Refused(401, "Unauthorized", f"Access to {request.url.path} requires a valid JWT bearer token: {exc}") from None
        try:
            authorizer.authorize(caller, action, f"{issuer}/policies/{attestation_type}")
        except NotPermitted as exc:
            policy_log.record(decision="denied", status=403, operation=action.value, attestation_type=attestation_type,
                              identity=caller.name, oid=caller.object_id, reason=str(exc))  # fmt: skip
            raise _Refused(403, "Forbidden", str(exc)) from None
        return caller

    async def request_jws(request: Request) -> str:
        body = await request.body()
        if len(body) > MAX_POLICY_JWS_BYTES:
            raise _Refused(400, "InvalidParameter", f"the request body is {len(body)} bytes; at most {MAX_POLICY_JWS_BYTES}")
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            raise _Refused(400, "InvalidParameter", "a policy JWS is ASCII (base64url segments)") from None

    def policy_result(caller: Caller, attestation_type: str, action: PolicyAction, result: str, jws: str,
                      stored: StoredPolicy) -> JSONResponse:  # fmt: skip
        token, _ = signer.sign({"x-ms-policy-result": result, "x-ms-policy-token-hash": base64url(jws_hash(jws))})
        policy_log.record(decision=result.lower(), operation=action.value, attestation_type=attestation_type,
                          identity=caller.name, oid=caller.object_id, policy_hash=stored.policy.hash)  # fmt: skip
        log.info("%s policy %s by %s: now %s", attestation_type, result.lower(), caller.name, stored.policy.hash)
        return JSONResponse({"token": token})

    @app.get("/policies/{attestation_type}")
    def get_policy(attestation_type: str, request: Request) -> JSONResponse:
        authorized(request, attestation_type, PolicyAction.READ)
        token, _ = signer.sign({"x-ms-policy": policies.current(attestation_type).jws})
        return JSONResponse({"token": token})

    @app.put("/policies/{attestation_type}")
    async def set_policy(attestation_type: str, request: Request) -> JSONResponse:
        caller = authorized(request, attestation_type, PolicyAction.WRITE)
        jws = await request_jws(request)
        try:
            stored = policies.set(attestation_type, jws)
        except (PolicyJwsInvalid, PolicyInvalid) as exc:
            code = "InvalidPolicy" if isinstance(exc, PolicyInvalid) else "InvalidParameter"
            policy_log.record(decision="refused", status=400, operation=PolicyAction.WRITE.value,
                              attestation_type=attestation_type, identity=caller.name, reason=str(exc))  # fmt: skip
            raise _Refused(400, code, f"the {attestation_type} policy was not set: {exc}") from None
        return policy_result(caller, attestation_type, PolicyAction.WRITE, "Updated", jws, stored)

    @app.post("/policies/{attestation_type}:reset")
    async def reset_policy(attestation_type: str, request: Request) -> JSONResponse:
        caller = authorized(request, attestation_type, PolicyAction.DELETE)
        jws = await request_jws(request)
        try:
            check_reset_jws(jws)
        except PolicyJwsInvalid as exc:
            raise _Refused(400, "InvalidParameter", f"the {attestation_type} policy was not reset: {exc}") from None
        return policy_result(caller, attestation_type, PolicyAction.DELETE, "Removed", jws, policies.reset(attestation_type))

    return app
