"""The request bodies of the Key Vault keys REST API (7.4 and later), as the stand-in reads them.

One model per body the API documents: ``KeyCreateParameters``, ``KeyUpdateParameters``,
``KeyOperationsParameters`` and ``KeyReleaseParameters``, with their ``KeyAttributes`` and
``KeyReleasePolicy``. Field names are the wire names. Types are strict (``"key_size": 2048.0`` is no key
size, ``"enabled": "yes"`` no boolean); a body of the wrong shape is ``400 BadParameter`` naming the field.
Properties the API does not define for a request (the read-only ``created``, ``recoveryLevel`` of an
attributes object a client echoes back, say) are ignored; what the stand-in does not support of what the
API defines (elliptic-curve key types, say) the app refuses by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from securetrain.core.contracts.base import first_error


class KeyVaultBody(BaseModel):
    """A request body of the keys API: frozen, strict types, undefined properties ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    @classmethod
    def parse(cls, document: Any) -> Self:
        """``document`` (a decoded JSON object) as this body; :class:`BodyInvalid` naming the field if not."""
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise BodyInvalid(*first_error(exc)) from None


class BodyInvalid(ValueError):
    """A body is not of its documented shape; ``field`` is the dotted path of what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"'{field}': {reason}")
        self.field = field


class KeyAttributes(KeyVaultBody):
    """``KeyAttributes``: the settable ones. ``nbf``/``exp`` are Unix times in seconds."""

    enabled: bool | None = None
    nbf: int | None = None
    exp: int | None = None
    exportable: bool | None = None


class KeyReleasePolicy(KeyVaultBody):
    """``KeyReleasePolicy``: the policy document (base64url ``data``), its content type, and immutability."""

    content_type: str | None = Field(default=None, alias="contentType")
    immutable: bool | None = None
    data: str


class KeyCreateParameters(KeyVaultBody):
    """``POST /keys/{name}/create``."""

    kty: str
    key_size: int | None = None
    public_exponent: int | None = None
    key_ops: list[str] | None = None
    attributes: KeyAttributes | None = None
    tags: dict[str, str] | None = None
    crv: str | None = None
    release_policy: KeyReleasePolicy | None = None


class KeyUpdateParameters(KeyVaultBody):
    """``PATCH /keys/{name}/{version}``."""

    key_ops: list[str] | None = None
    attributes: KeyAttributes | None = None
    tags: dict[str, str] | None = None
    release_policy: KeyReleasePolicy | None = None


class KeyOperationsParameters(KeyVaultBody):
    """``POST /keys/{name}/{version}/encrypt|decrypt|wrapkey|unwrapkey``: algorithm and base64url value.

    ``iv``, ``aad`` and ``tag`` are for the symmetric algorithms of Managed HSM; the stand-in holds RSA keys.
    """

    alg: str
    value: str
    iv: str | None = None
    aad: str | None = None
    tag: str | None = None


class KeyReleaseParameters(KeyVaultBody):
    """``POST /keys/{name}/{version}/release``: the attestation token, and optionally a nonce and ``enc``."""

    target: Annotated[str, Field(min_length=1)]
    nonce: str | None = None
    enc: str | None = None
