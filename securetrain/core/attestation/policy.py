"""The identity of an Azure Attestation (MAA) attestation policy: the hash its tokens carry.

MAA puts ``x-ms-policy-hash`` into every token it issues: the hash of the attestation policy that
evaluated the evidence, defined in Microsoft's claim-set documentation
(https://learn.microsoft.com/azure/attestation/claim-sets, "Outgoing claims") as::

    BASE64URL(SHA256(UTF8(BASE64URL(UTF8(policy text)))))

The inner BASE64URL is the form MAA stores and transmits a policy in (the ``AttestationPolicy`` member
of the policy JWS); both encodings are base64url without padding. A relying party that pins this value
(the approved Key Vault release policy does) accepts tokens only from evaluations under exactly that
policy text: one changed byte, even white space, is another policy.
"""

from __future__ import annotations

import base64
import hashlib


def base64url(data: bytes) -> str:
    """Base64url without padding, as MAA writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def maa_policy_hash(policy_text: str) -> str:
    """``x-ms-policy-hash`` of ``policy_text`` as MAA computes it for tokens issued under that policy."""
    stored_form = base64url(policy_text.encode("utf-8"))
    return base64url(hashlib.sha256(stored_form.encode("utf-8")).digest())
