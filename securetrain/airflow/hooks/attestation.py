"""The attestation service: Airflow validates the CVM's tokens itself (signature, issuer, freshness, policy)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from securetrain.airflow.hooks._connection import ServiceConnection
from securetrain.core.attestation.tokens import AuthorityKeys, TokenRejected, TokenValidator, ValidatedToken
from securetrain.core.release_policy import ReleaseDenied, ReleasePolicy, evaluate


class TokenNotApproved(TokenRejected):
    """The token is genuine and fresh, but its claims do not satisfy the approved release policy."""


class AttestationHook(BaseHook):
    """Tokens of the attestation service at the connection's host (Microsoft Azure Attestation or the local one).

    Signing keys come from the service's ``/certs`` over verified TLS (``ca_bundle`` in the extra for the
    local stack).
    """

    conn_name_attr = "attestation_conn_id"
    default_conn_name = "securetrain_attestation"
    conn_type = "securetrain_attestation"
    hook_name = "securetrain attestation"

    def __init__(self, attestation_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.attestation_conn_id = attestation_conn_id

    @cached_property
    def connection(self) -> ServiceConnection:
        return ServiceConnection.of(self.get_connection(self.attestation_conn_id))

    @cached_property
    def validator(self) -> TokenValidator:
        return TokenValidator(self._keys)

    def get_conn(self) -> TokenValidator:
        return self.validator

    def validate(self, token: str, *, policy: ReleasePolicy | None = None) -> ValidatedToken:
        """Validate ``token`` and, given ``policy``, check its claims satisfy it as Key Vault would."""
        validated = self.validator.validate(token)
        if policy is not None:
            try:
                evaluate(policy, validated.claims)
            except ReleaseDenied as exc:
                raise TokenNotApproved(f"the TEE's attestation would not be released the KEK: {exc}") from None
        return validated

    def signing_key_ids(self) -> list[str]:
        """The ids of the service's current signing keys (fetched over verified TLS): reachability."""
        return self._keys.key_ids()

    @cached_property
    def _keys(self) -> AuthorityKeys:
        return AuthorityKeys(self.connection.endpoint, verify=self.connection.tls_verify)


_TEE_CLAIMS = ("x-ms-attestation-type", "x-ms-compliance-status", "x-ms-sevsnpvm-hostdata",
               "x-ms-sevsnpvm-launchmeasurement", "x-ms-sevsnpvm-reportdata", "x-ms-sevsnpvm-guestsvn",
               "x-ms-sevsnpvm-is-debuggable")  # fmt: skip
_TOKEN_CLAIMS = ("iss", "iat", "exp", "nonce", "x-ms-policy-hash", "x-securetrain-platform", *_TEE_CLAIMS,
                 "x-ms-azurevm-attested-pcr-values")  # fmt: skip


def claims_summary(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The claims a reviewer needs, as JSON for XCom and the audit log (no token: it is a bearer credential). An
    Azure CVM's token (``azurevm``) nests the hardware's claims in ``x-ms-isolation-tee``: they stay nested."""
    summary = {name: claims[name] for name in _TOKEN_CLAIMS if name in claims}
    tee = claims.get("x-ms-isolation-tee")
    if isinstance(tee, Mapping):
        summary["x-ms-isolation-tee"] = {name: tee[name] for name in _TEE_CLAIMS if name in tee}
    return summary
