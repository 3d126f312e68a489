"""The HTTP face of the attestation stand-in: MAA's endpoints, bodies, tokens and errors.

    GET  /.well-known/openid-configuration   issuer, jwks_uri
    GET  /certs                              {"keys": [{"kid", "kty", "x5c", ...}]}
    POST /attest/SevSnpVm?api-version=2022-08-01
         200 {"token": JWT}  |  400 {"error": {"code", "message"}}

Every refusal is a 400 whose message names the failed check; nothing a client sends can make it
answer 500 or sign a token for evidence that failed a check. Each decision, issued or refused, is
appended to ``issuance.jsonl`` for the audit trail.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from securetrain.core.appraisal import Appraisal, AppraisalPolicy
from securetrain.core.attestation.claims import SIMULATED_CVM, compliance_status, platform_claim, sevsnpvm_claims
from securetrain.core.errors import SecuretrainError
from securetrain.localstack.standins.attestation_service.evidence import EvidenceRefused, NonceLedger, SnpEvidence, appraise
from securetrain.localstack.standins.attestation_service.signing import SigningKeyStore
from securetrain.localstack.standins.decision_log import DecisionLog

log = logging.getLogger(__name__)

API_VERSION = "2022-08-01"
DEFAULT_TOKEN_LIFETIME_S = 8 * 3600
# A simulated platform never earns MAA's compliance status, so a production release policy (which
# asks for azure-compliant-cvm) refuses its tokens without knowing about simulations.
SIMULATED = SIMULATED_CVM


@dataclass(frozen=True)
class ServiceConfig:
    issuer: str
    policy: AppraisalPolicy
    state_dir: Path
    token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S


def sev_snp_claims(appraisal: Appraisal, evidence: SnpEvidence, policy_hash: str) -> dict[str, Any]:
    """MAA's SEV-SNP claim names, filled from the verified report and the runtime data."""
    report = appraisal.verified.report
    simulated = appraisal.simulated
    claims: dict[str, Any] = {
        "x-ms-ver": "1.0",
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": compliance_status(simulated),
        "x-securetrain-platform": platform_claim(simulated),
        "x-ms-policy-hash": policy_hash,
        "x-ms-runtime": evidence.runtime,
        **sevsnpvm_claims(report),
    }
    if evidence.nonce is not None:
        claims["nonce"] = evidence.nonce
    return claims


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=400, content={"error": {"code": code, "message": message}})


def create_app(config: ServiceConfig) -> FastAPI:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = SigningKeyStore(config.state_dir / "signing", token_lifetime=config.token_lifetime_s)
    nonces = NonceLedger(config.state_dir / "nonces.sqlite", retention_s=config.token_lifetime_s)
    issuance = DecisionLog(config.state_dir / "issuance.jsonl")
    policy_hash = config.policy.sha256
    issuer = config.issuer.rstrip("/")
    app = FastAPI(title="securetrain attestation service (MAA-compatible)", docs_url=None, redoc_url=None)

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

    @app.post("/attest/SevSnpVm")
    async def attest_sev_snp_vm(request: Request) -> JSONResponse:
        if request.query_params.get("api-version") != API_VERSION:
            return _error("InvalidParameter", f"api-version must be {API_VERSION}")
        body = await request.body()
        try:
            evidence = SnpEvidence.from_body(body)
            appraisal = appraise(evidence, config.policy)
            if evidence.nonce is not None:
                nonces.spend(evidence.nonce)
        except SecuretrainError as exc:
            code = exc.code if isinstance(exc, EvidenceRefused) else type(exc).__name__
            log.warning("attestation refused (%s): %s", code, exc)
            issuance.record(decision="refused", code=code, reason=str(exc))
            return _error(code, str(exc))
        now = int(time.time())
        signer = keys.current
        claims = {
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now + config.token_lifetime_s,
            "jti": secrets.token_hex(16),
            **sev_snp_claims(appraisal, evidence, policy_hash),
        }
        token = jwt.encode(
            claims, signer.private_key, algorithm="RS256",
            headers={"kid": signer.kid, "jku": f"{issuer}/certs", "typ": "JWT"},
        )
        issuance.record(
            decision="issued", jti=claims["jti"], kid=signer.kid, nonce=evidence.nonce,
            measurement=claims["x-ms-sevsnpvm-launchmeasurement"], host_data=claims["x-ms-sevsnpvm-hostdata"],
            platform=claims["x-securetrain-platform"], policy_hash=policy_hash,
        )
        log.info("token %s issued for measurement %s", claims["jti"], claims["x-ms-sevsnpvm-launchmeasurement"][:16])
        return JSONResponse({"token": token})

    return app
