"""How MAA carries an attestation policy over the wire: a JSON Web Signature whose payload holds the text.

"How to author an attestation policy" (https://learn.microsoft.com/azure/attestation/author-sign-policy):
the payload is ``{"AttestationPolicy": BASE64URL(UTF8(policy text))}``; on a provider in AAD mode the JWS may
be unsigned, ``{"alg":"none"}`` with an empty signature, which is what ``azure-security-attestation``'s
``AttestationAdministrationClient.set_policy`` sends without a signing key. A reset sends the same header
with an empty payload. This service is a provider in AAD mode that takes unsigned policies only: it cannot
say who signed a policy, so it refuses a signed one rather than appear to vouch for its signer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

from securetrain.core.attestation.policy import base64url
from securetrain.core.errors import SecuretrainError

#: The payload member that holds the policy text, base64url.
POLICY_MEMBER = "AttestationPolicy"
_UNSIGNED_HEADER = {"alg": "none"}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class PolicyJwsInvalid(SecuretrainError):
    """A policy or reset request is not the JWS MAA defines; the message says what is wrong."""


def unsigned_policy_jws(policy_text: str) -> str:
    """``policy_text`` as an unsigned policy JWS (how a policy set through the API is kept and returned)."""
    header = base64url(json.dumps(_UNSIGNED_HEADER, separators=(",", ":")).encode())
    payload = base64url(json.dumps({POLICY_MEMBER: base64url(policy_text.encode("utf-8"))}).encode())
    return f"{header}.{payload}."


def jws_hash(jws: str) -> bytes:
    """SHA-256 of the JWS as sent: ``x-ms-policy-token-hash``, by which a client checks what the service got."""
    return hashlib.sha256(jws.encode("utf-8")).digest()


def _decoded(segment: str, what: str) -> bytes:
    unpadded = segment.rstrip("=")
    if not _BASE64URL.fullmatch(unpadded):
        raise PolicyJwsInvalid(f"the {what} is not base64url")
    try:
        value = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        raise PolicyJwsInvalid(f"the {what} is not base64url") from None
    if base64url(value) != segment.rstrip("="):
        raise PolicyJwsInvalid(f"the {what} is not canonical base64url")
    return value


def _unsigned_payload(jws: str) -> bytes:
    """The payload of an unsigned JWS; :class:`PolicyJwsInvalid` for anything else."""
    parts = jws.split(".")
    if len(parts) != 3:
        raise PolicyJwsInvalid("the request body is not a JWS (three base64url segments joined by dots)")
    header_segment, payload_segment, signature = parts
    try:
        header = json.loads(_decoded(header_segment, "JWS header"))
    except (UnicodeDecodeError, ValueError):
        raise PolicyJwsInvalid("the JWS header is not JSON") from None
    if header != _UNSIGNED_HEADER or signature:
        algorithm = header.get("alg") if isinstance(header, dict) else None
        raise PolicyJwsInvalid(
            f"the policy JWS is signed (alg {algorithm!r}); this provider is in AAD mode and takes unsigned "
            'policies ({"alg":"none"}, no signature) only'
        )
    return _decoded(payload_segment, "JWS payload")


def policy_text(jws: str) -> str:
    """The attestation policy text a set-policy JWS carries."""
    try:
        payload = json.loads(_unsigned_payload(jws))
    except (UnicodeDecodeError, ValueError):
        raise PolicyJwsInvalid("the JWS payload is not JSON") from None
    if not isinstance(payload, dict) or set(payload) != {POLICY_MEMBER} or not isinstance(payload[POLICY_MEMBER], str):
        raise PolicyJwsInvalid(f'the JWS payload must be {{"{POLICY_MEMBER}": "<base64url policy>"}}')
    try:
        return _decoded(payload[POLICY_MEMBER], POLICY_MEMBER).decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyJwsInvalid(f"{POLICY_MEMBER} is not UTF-8 text") from None


def check_reset_jws(jws: str) -> None:
    """Return if ``jws`` is a reset request: an unsigned JWS with an empty payload."""
    if _unsigned_payload(jws):
        raise PolicyJwsInvalid("a reset carries an empty JWS payload")
