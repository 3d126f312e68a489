"""The agent's attestation tokens: ``POST /v1/attestation`` (a challenge) and ``GET /v1/attestation``.

The token is what counts: a reader validates it itself (signature, issuer, lifetime, nonce, the release
policy); the claims beside it are the token's payload as the agent read it, for display.
"""

from __future__ import annotations

from securetrain.core.contracts.base import Contract, DocumentInvalid, JsonObject
from securetrain.core.contracts.job_spec import Nonce


class Attestation(Contract):
    """A token the TEE obtained, its claims, and when (Unix time)."""

    token: str
    claims: JsonObject
    attested_at: float


class LatestAttestation(Attestation):
    """The agent's latest attestation: the job it belongs to (None for a challenge) and its number in that job."""

    job_id: str | None
    sequence: int


class InvalidRequest(DocumentInvalid):
    """A request body is not what the endpoint takes; ``field`` names what is wrong."""

    document = "request"


class AttestationChallenge(Contract):
    """``POST /v1/attestation``'s body: the caller's fresh nonce, for which the TEE attests now."""

    nonce: Nonce

    invalid = InvalidRequest
