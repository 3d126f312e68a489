"""Attesting the TEE for one job: an ephemeral key bound to hardware evidence, and a token that says so.

Per job the TEE makes an RSA-3072 key in memory (:class:`TeeKey`); it never leaves the process and dies
with the job. How the hardware vouches for that key and the attestation nonce depends on the platform:

- **bare SEV-SNP** (a provider with ``report``): the TEE's statement, the *runtime data*, is ``{"keys": [public
  JWK of that key], "nonce": attestation nonce, "contract": digest of the job's contract, if it has one}`` as
  canonical JSON; REPORT_DATA is its SHA-256 (padded to 64
  bytes); it goes to ``/attest/SevSnpVm``, whose token repeats the statement in ``x-ms-runtime``.
- **Azure Container Instances** (:class:`~securetrain.tee.evidence.azure_aci.AzureAciProvider`): the same, from
  the utility VM's report; the request also carries Microsoft's UVM endorsement (``Endorsements``).
- **Azure confidential VM** (:class:`~securetrain.tee.evidence.azure_cvm.AzureCvmProvider`): the guest cannot
  choose REPORT_DATA; it writes HCL user data = SHA-256 of the key's PEM (then 32 zero bytes), which the
  paravisor's runtime claims carry into the report, and the vTPM quotes its PCRs over SHA-256 of the attestation
  nonce (:func:`~securetrain.core.attestation.azure_guest.quote_nonce`). The request goes to
  ``/attest/AzureGuest`` with the key, that digest and the contract's in its client payload
  (:mod:`securetrain.core.attestation.azure_guest`); the token's ``nonce`` is the digest (base64).

Either way Key Vault wraps the released KEK to the key the token lists in ``x-ms-runtime.keys``.

A TEE whose measured configuration requires a GPU (:mod:`securetrain.tee.gpu_attestation`) attests it in the
same step: the GPU's report answers a nonce derived from the runtime data above (on the Azure CVM too, where
the key, nonce and contract it names are what the vTPM evidence binds), and a GPU that fails any check stops
the attestation, so no key is asked for on the strength of the CPU alone.

The TEE trusts its token no more than anyone else would: :class:`Attester` validates the signature and
issuer (``TokenValidator``), the nonce, and that the token's runtime key and its binding (REPORT_DATA, or the
HCL user data) are the ones it attested, before the token is used to ask for a key.

Nonces: the attestation service spends every nonce once, so a job's first attestation uses the job
nonce and each later one (renewal, or a restart after a crash) ``<job nonce>.<n>``
(:func:`attestation_nonce`); Airflow can tie any of them to its job. :class:`AttestationSession`
re-attests before the token expires and reports a failure so that the job stops.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import platform
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.attestation.azure_guest import (
    AZURE_VM,
    GuestOs,
    azure_guest_request,
    quote_nonce,
    token_nonce,
    user_data_for,
)
from securetrain.core.approved_release_policies import contract_claim
from securetrain.core.attestation.maa import AttestationServiceClient, report_data_for, runtime_data_bytes
from securetrain.core.azure_cvm.evidence import CvmEvidence
from securetrain.core.attestation.tokens import TokenRejected, TokenValidator, ValidatedToken
from securetrain.core.errors import SecuretrainError
from securetrain.core.release_policy import claim_value
from securetrain.tee.evidence import EvidenceProvider
from securetrain.tee.evidence.azure_cvm import AzureCvmProvider
from securetrain.tee.gpu_attestation import GpuAttestation, GpuAttester

log = logging.getLogger(__name__)

TEE_KEY_BITS = 3072
# Re-attest when this fraction of the token's lifetime has passed, so that a slow attestation service
# still answers before the old token expires.
RENEW_AT_FRACTION = 0.75
_MIN_RENEW_DELAY_S = 1.0


class ReattestationFailed(SecuretrainError):
    """Renewing the job's attestation failed; the job stops. The message carries the cause."""


def _b64url_uint(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def attestation_nonce(job_nonce: str, sequence: int) -> str:
    """The nonce of the job's ``sequence``-th attestation (0-based): the job nonce, then ``<nonce>.<n>``."""
    if sequence < 0:
        raise ValueError("attestation sequence numbers start at 0")
    return job_nonce if sequence == 0 else f"{job_nonce}.{sequence}"


class TeeKey:
    """The job's ephemeral RSA key: made in memory, public half attested, private half unwraps the KEK."""

    def __init__(self) -> None:
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=TEE_KEY_BITS)
        numbers = self._private_key.public_key().public_numbers()
        self._n, self._e = _b64url_uint(numbers.n), _b64url_uint(numbers.e)
        # RFC 7638 thumbprint: names the key by its content, so the token and the release name the same key.
        thumbprint_input = json.dumps({"e": self._e, "kty": "RSA", "n": self._n}, separators=(",", ":"))
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(thumbprint_input.encode()).digest()).rstrip(b"=").decode()

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        return self._private_key

    def public_jwk(self) -> dict[str, Any]:
        """The public key as the JWK the runtime data carries (MAA's ``x-ms-runtime.keys`` shape)."""
        return {"kid": self.kid, "kty": "RSA", "key_ops": ["encrypt"], "e": self._e, "n": self._n}

    def matches(self, jwk: Mapping[str, Any]) -> bool:
        return jwk.get("kty") == "RSA" and jwk.get("n") == self._n and jwk.get("e") == self._e

    def __repr__(self) -> str:
        return f"TeeKey(kid={self.kid!r})"


def runtime_data(key: TeeKey, nonce: str, contract: str | None = None) -> bytes:
    """The TEE's statement for one attestation, as the bytes whose hash goes into REPORT_DATA: its key, the
    nonce, and the digest of the contract it enforces (if the job runs under one)."""
    statement: dict[str, Any] = {"keys": [key.public_jwk()], "nonce": nonce}
    if contract is not None:
        statement["contract"] = contract
    return runtime_data_bytes(statement)


def token_contract(token: ValidatedToken) -> str | None:
    """The contract digest ``token`` says the TEE enforces (:func:`~securetrain.core.approved_release_policies.contract_claim`)."""
    platform = "azure-cvm" if token.claims.get("x-ms-attestation-type") == AZURE_VM else "snp"
    _, value = claim_value(token.claims, contract_claim(platform))
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Attestation:
    """One attestation of the TEE: the CPU's validated token and, where the TEE requires a GPU, its verified claims."""

    token: ValidatedToken
    gpu: GpuAttestation | None = None


class Attester:
    """Turns hardware evidence into a validated token: evidence provider → attestation service → checks, and the
    GPU's attestation where ``gpu`` is given (the TEE's configuration requires one)."""

    def __init__(
        self, provider: EvidenceProvider | AzureCvmProvider, service: AttestationServiceClient, validator: TokenValidator,
        gpu: GpuAttester | None = None,
    ) -> None:  # fmt: skip
        self.provider = provider
        self._service = service
        self._validator = validator
        self.gpu = gpu

    @property
    def tee_type(self) -> str:
        return self.provider.tee_type

    def historical(self, raw: str) -> ValidatedToken:
        """A token recorded earlier (in a ledger, a log), validated against this TEE's attestation authority;
        its expiry is not checked."""
        return self._validator.validate(raw, historical=True)

    def attest(self, key: TeeKey, nonce: str, *, contract: str | None = None) -> ValidatedToken:
        """Attest ``key`` with ``nonce`` (and the digest of the ``contract`` the TEE enforces); the token is
        checked before it is returned, and so is the GPU where one is required (:meth:`attest_tee`)."""
        return self.attest_tee(key, nonce, contract=contract).token

    def attest_tee(self, key: TeeKey, nonce: str, *, contract: str | None = None) -> Attestation:
        """:meth:`attest`, with the GPU claims the attestation relied on."""
        token = self._attest_cpu(key, nonce, contract)
        if self.gpu is None:
            return Attestation(token)
        return Attestation(token, self.gpu.attest(runtime_data(key, nonce, contract)))

    def _attest_cpu(self, key: TeeKey, nonce: str, contract: str | None) -> ValidatedToken:
        if isinstance(self.provider, AzureCvmProvider):
            token = self._attest_azure_guest(self.provider, key, nonce, contract)
        else:
            token = self._attest_sev_snp(key, nonce, contract)
        if not any(key.matches(jwk) for jwk in token.runtime_keys):
            raise TokenRejected("the token's runtime data does not carry this TEE's key: it was not issued for us")
        if token_contract(token) != contract:
            raise TokenRejected(f"the token names contract {token_contract(token)}, not the one this TEE enforces ({contract})")
        log.info("attested (%s): token %s valid until %s", self.tee_type, token.kid, time.ctime(token.expires_at))
        return token

    def _attest_sev_snp(self, key: TeeKey, nonce: str, contract: str | None) -> ValidatedToken:
        statement = runtime_data(key, nonce, contract)
        report_data = report_data_for(statement)
        evidence = self.provider.report(report_data)
        raw = self._service.attest_sev_snp_vm(
            evidence.report, evidence.vcek_chain_pem, statement, nonce, uvm_endorsement=evidence.uvm_endorsement
        )
        token = self._validator.validate(raw, expected_nonce=nonce)
        if token.claims.get("x-ms-sevsnpvm-reportdata") != report_data.hex():
            raise TokenRejected("the token's REPORT_DATA is not the one this TEE attested")
        return token

    def _attest_azure_guest(
        self, provider: AzureCvmProvider, key: TeeKey, nonce: str, contract: str | None
    ) -> ValidatedToken:
        public_key = key.private_key.public_key()
        user_data = user_data_for(public_key)
        document = provider.evidence(user_data, quote_nonce(nonce))
        evidence = CvmEvidence.from_document({"report": {"snpCvm": document}})
        tcg_log = base64.b64decode(document["evidence"]["eventLog"])
        request = azure_guest_request(
            evidence, public_key, guest_os(), tcg_log=tcg_log, runtime_key_id=key.kid, contract=contract
        )
        raw = self._service.attest_azure_guest(request)
        token = self._validator.validate(raw, expected_nonce=token_nonce(nonce, {"x-ms-attestation-type": AZURE_VM}))
        tee = token.claims.get("x-ms-isolation-tee")
        runtime = tee.get("x-ms-runtime") if isinstance(tee, Mapping) else None
        bound = runtime.get("user-data") if isinstance(runtime, Mapping) else None
        if not isinstance(bound, str) or bound.lower() != user_data.hex():
            raise TokenRejected("the token's HCL user data is not the one this TEE bound its key with")
        return token


def guest_os() -> GuestOs:
    """This guest's operating system as Azure's guest attestation library reports it (os-release, kernel)."""
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        release = {}
    major, _, minor = release.get("VERSION_ID", "").partition(".")
    return GuestOs(platform.system(), release.get("NAME", ""), major, minor, platform.release())


def renewal_delay(token: ValidatedToken, now: float) -> float:
    """Seconds from ``now`` until ``token`` should be renewed (at least one second)."""
    issued, expires = int(token.claims["iat"]), token.expires_at
    renew_at = issued + (expires - issued) * RENEW_AT_FRACTION
    return max(renew_at - now, _MIN_RENEW_DELAY_S)


@dataclass(frozen=True)
class AttestationState:
    """The latest attestation of a job: its token and when (Unix time) it was obtained."""

    token: ValidatedToken
    attested_at: float
    sequence: int
    #: The GPU's verified claims, where the TEE requires a GPU.
    gpu: GpuAttestation | None = None


class AttestationSession:
    """A job's attestations: the first one, then renewals in a background thread until :meth:`stop`.

    ``next_sequence`` is the first unused attestation number (kept in the job record, so a restarted job
    never reuses a spent nonce); ``contract`` is the digest of the contract the job runs under, which every
    token of the session carries. ``on_attested`` is told each new state (to persist the sequence and
    serve the token); ``on_failure`` is told when a renewal failed, after which no more are tried.
    """

    def __init__(
        self,
        attester: Attester,
        key: TeeKey,
        job_nonce: str,
        *,
        next_sequence: int,
        on_attested: Callable[[AttestationState], None],
        on_failure: Callable[[ReattestationFailed], None],
        contract: str | None = None,
    ) -> None:
        self._attester = attester
        self._contract = contract
        self.key = key
        self._job_nonce = job_nonce
        self._next_sequence = next_sequence
        self._on_attested = on_attested
        self._on_failure = on_failure
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.state: AttestationState | None = None

    def attest(self) -> AttestationState:
        """Attest now with the next nonce; errors propagate to the caller."""
        with self._lock:
            sequence = self._next_sequence
            self._next_sequence += 1
            attestation = self._attester.attest_tee(
                self.key, attestation_nonce(self._job_nonce, sequence), contract=self._contract
            )
            self.state = AttestationState(attestation.token, time.time(), sequence, attestation.gpu)
        self._on_attested(self.state)
        return self.state

    def start_renewal(self) -> None:
        """Re-attest in the background before each token expires (call after the first :meth:`attest`)."""
        if self.state is None:
            raise RuntimeError("attest() before start_renewal()")
        self._thread = threading.Thread(target=self._renew_loop, name="reattestation", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while self.state is not None:
            if self._stopped.wait(renewal_delay(self.state.token, time.time())):
                return
            try:
                self.attest()
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the job must not go on unattested
                failure = ReattestationFailed(f"re-attestation failed, the job stops: {exc}")
                log.error("%s", failure)
                self._on_failure(failure)
                return

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
