"""The request bodies of the Key Vault keys REST API (7.4 and later), as the stand-in reads them.

One model per body the API documents, with the wire names. Types are strict (``"key_size": 2048.0`` is no key
size) and a body of the wrong shape is ``400 BadParameter`` naming the field; properties the API does not define
for a request (a read-only ``created`` a client echoes back, say) are ignored. What the stand-in does not support
of what the API defines (elliptic-curve key types, say) the app refuses by name.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from securetrain.localstack.standins.request_body import RequestBody


class KeyAttributes(RequestBody):
    """``KeyAttributes``: the settable ones. ``nbf``/``exp`` are Unix times in seconds."""

    enabled: bool | None = None
    nbf: int | None = None
    exp: int | None = None
    exportable: bool | None = None


class KeyReleasePolicy(RequestBody):
    """``KeyReleasePolicy``: the policy document (base64url ``data``), its content type, and immutability."""

    content_type: str | None = Field(default=None, alias="contentType")
    immutable: bool | None = None
    data: str


class KeyCreateParameters(RequestBody):
    """``POST /keys/{name}/create``."""

    kty: str
    key_size: int | None = None
    public_exponent: int | None = None
    key_ops: list[str] | None = None
    attributes: KeyAttributes | None = None
    tags: dict[str, str] | None = None
    crv: str | None = None
    release_policy: KeyReleasePolicy | None = None


class KeyUpdateParameters(RequestBody):
    """``PATCH /keys/{name}/{version}``."""

    key_ops: list[str] | None = None
    attributes: KeyAttributes | None = None
    tags: dict[str, str] | None = None
    release_policy: KeyReleasePolicy | None = None


class KeyOperationsParameters(RequestBody):
    """``POST /keys/{name}/{version}/encrypt|decrypt|wrapkey|unwrapkey``: algorithm and base64url value.

    ``iv``, ``aad`` and ``tag`` are for the symmetric algorithms of Managed HSM; the stand-in holds RSA keys.
    """

    alg: str
    value: str
    iv: str | None = None
    aad: str | None = None
    tag: str | None = None


class KeyReleaseParameters(RequestBody):
    """``POST /keys/{name}/{version}/release``: the attestation token, and optionally a nonce and ``enc``."""

    target: Annotated[str, Field(min_length=1)]
    nonce: str | None = None
    enc: str | None = None
