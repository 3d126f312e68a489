"""A client of the trainer agent's API over mutual TLS (the Airflow hook wraps it; docs/trainer.md, "The client").

Every request may be repeated safely, even one whose answer was lost: a submit names its run id, and the
agent answers a repeated one with the existing job. An answer that does not match its contract
(:mod:`securetrain.core.contracts`) is :class:`CvmAnswerInvalid`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydantic import BaseModel, ValidationError

from securetrain.core.contracts.attestation import Attestation, LatestAttestation
from securetrain.core.contracts.health import Health
from securetrain.core.contracts.job_spec import JobSpec
from securetrain.core.contracts.jobs import JobList, JobView
from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.core.http import RETRIES, HttpsSession

log = logging.getLogger(__name__)

Answer = TypeVar("Answer", bound=BaseModel)


class CvmError(SecuretrainError):
    """The agent answered with an error; ``code`` is its error code."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class CvmRequestRejected(CvmError, ConfigurationError):
    """The agent refused the request (400): malformed (``field`` names the job spec field), or outside the job's
    contract (``term`` names the contract term it breaks)."""

    def __init__(self, message: str, *, code: str, status: int, field: str | None, term: str | None = None) -> None:
        super().__init__(message, code=code, status=status)
        self.field = field
        self.term = term


class CvmAccessDenied(CvmError, SecurityViolation):
    """The agent refused this client's identity (403)."""


class CvmAttestationRefused(CvmError, SecurityViolation):
    """A security check the request depends on failed (424): the agent's evidence or token did not verify, or
    the job's contract is not in force (a signature missing, revoked, expired)."""


class CvmJobNotFound(CvmError):
    """The agent has no such job (404)."""


class CvmConflict(CvmError):
    """The request contradicts the job (409): another spec under the same run id, or cancel after the end."""


class CvmAnswerInvalid(CvmError):
    """The agent answered, but not with what its API promises (another version, or not the agent)."""


class CvmUnreachable(SecuretrainError):
    """The agent could not be reached after the bounded retries."""


class CvmTlsError(SecurityViolation):
    """The agent's TLS certificate did not verify, or the agent refused ours."""


_ERRORS_BY_STATUS: dict[int, type[CvmError]] = {
    403: CvmAccessDenied,
    404: CvmJobNotFound,
    409: CvmConflict,
    424: CvmAttestationRefused,
}


class CvmClient:
    """The agent at ``endpoint``, called with the client certificate ``cert``/``key`` (PEM files)."""

    def __init__(self, endpoint: str, *, cert: Path, key: Path, ca_bundle: Path | None, timeout: float = 30.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._cert = (str(cert), str(key))
        self._timeout = timeout
        self._session = HttpsSession(str(ca_bundle) if ca_bundle else True)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> CvmClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> requests.Response:
        url = f"{self.endpoint}{path}"
        try:
            response = self._session.request(method, url, json=body, cert=self._cert, timeout=timeout or self._timeout)
        except requests.exceptions.SSLError as exc:
            raise CvmTlsError(f"TLS with the agent at {url} failed: {exc}") from None
        except requests.RequestException as exc:
            raise CvmUnreachable(
                f"cannot reach the agent at {url} after {RETRIES} retries: {exc} (a connection closed without "
                "an answer may also mean that the agent refused this client certificate)"
            ) from None
        if response.status_code < 400:
            return response
        try:
            error = response.json()["error"]
            code, message, field, term = str(error["code"]), str(error["message"]), error.get("field"), error.get("term")
        except (ValueError, KeyError, TypeError):
            code, message, field, term = str(response.status_code), response.text[:500], None, None
        text = f"agent {method} {path}: {response.status_code} {code}: {message}"
        if response.status_code == 400:
            raise CvmRequestRejected(text, code=code, status=400, field=field, term=term)
        error_type = _ERRORS_BY_STATUS.get(response.status_code)
        if error_type is not None:
            raise error_type(text, code=code, status=response.status_code)
        raise CvmUnreachable(text)

    def _answer(self, answer_type: type[Answer], method: str, path: str, body: Mapping[str, Any] | None = None) -> Answer:
        response = self._request(method, path, body)
        try:
            return answer_type.model_validate_json(response.content)
        except ValidationError as exc:
            raise CvmAnswerInvalid(
                f"agent {method} {path}: the answer is not a {answer_type.__name__}: {exc}", code="AnswerInvalid",
                status=response.status_code,
            ) from None

    def submit(self, spec: JobSpec | Mapping[str, Any]) -> JobView:
        """Submit a job spec; the job, new or the one already submitted for its run id.

        A document that is not a :class:`JobSpec` is sent as it is: the agent checks it and refuses a
        malformed one (:class:`CvmRequestRejected`, naming the field).
        """
        document = spec.to_json() if isinstance(spec, JobSpec) else spec
        return self._answer(JobView, "POST", "/v1/jobs", document)

    def job(self, job_id: str) -> JobView:
        return self._answer(JobView, "GET", f"/v1/jobs/{job_id}")

    def jobs(self) -> tuple[JobView, ...]:
        return self._answer(JobList, "GET", "/v1/jobs").jobs

    def cancel(self, job_id: str) -> JobView:
        return self._answer(JobView, "POST", f"/v1/jobs/{job_id}/cancel")

    def health(self) -> Health:
        return self._answer(Health, "GET", "/v1/health")

    def attestation(self) -> LatestAttestation:
        return self._answer(LatestAttestation, "GET", "/v1/attestation")

    def attest(self, nonce: str) -> Attestation:
        """Have the TEE attest now for ``nonce``; validate the token yourself (the claims are for display)."""
        return self._answer(Attestation, "POST", "/v1/attestation", {"nonce": nonce})

    def export_model(
        self, *, kek_id: str, run_id: str, container: str, blob: str, sealed_sha256: str, recipient_public_key_pem: str,
        nonce: str, approval: Mapping[str, Any],
    ) -> bytes:  # fmt: skip
        """Have the TEE re-seal a registered model for a recipient's RSA public key; the sealed bytes.

        The TEE checks ``approval`` (the data owner's signed export approval for this recipient and KEK),
        attests with ``nonce``, has the KEK released to it, checks the stored model's digest and seal,
        re-seals it and records the export in the audit log: the KEK's private half never leaves the TEE.
        """
        body = {
            "kek_id": kek_id, "run_id": run_id, "container": container, "blob": blob, "sealed_sha256": sealed_sha256,
            "recipient_public_key": recipient_public_key_pem, "nonce": nonce, "approval": dict(approval),
        }  # fmt: skip
        return self._request("POST", "/v1/exports", body).content

    def rewrap(self, *, kek_id: str, containers: list[str], nonce: str, timeout_s: float = 600) -> dict[str, Any]:
        """Have the TEE rewrap every sealed blob of ``containers`` to the KEK version ``kek_id``.

        The TEE attests with ``nonce``, has the versions released to it and rewraps each data key in its
        memory; the answer is its signed statement of what it did (check it with
        :func:`securetrain.core.rotation.verify_rewrap_answer`). It reads and rewrites every blob of an older
        version, hence the longer timeout.
        """
        body = {"kek_id": kek_id, "containers": containers, "nonce": nonce}
        return self._request("POST", "/v1/rewraps", body, timeout=timeout_s).json()

    def metrics(self) -> str:
        return self._request("GET", "/metrics").text
