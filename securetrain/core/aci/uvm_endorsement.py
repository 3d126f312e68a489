"""The UVM endorsement: Microsoft's signed statement of a utility VM build's launch measurement and SVN.

ACI runs every confidential container group in a utility VM (UVM) that Microsoft builds. The SNP report
says what was launched (MEASUREMENT); the endorsement says that this measurement is a UVM Microsoft
released, and its security version number. Its format, as found in genuine ACI evidence and as
Microsoft's own verifier (CCF, ``src/node/uvm_endorsements.cpp``) reads it, is a COSE_Sign1 (RFC 9052,
CBOR tag 18) whose protected header holds:

==============  =====================================================================
label           value
==============  =====================================================================
1 (alg)         -38, RSASSA-PSS with SHA-384 (RFC 8230; salt length 48)
3 (content)     ``application/json``
33 (x5chain)    the signer's chain, leaf first (RFC 9360): ContainerPlat → Microsoft SCD
                Products RSA CA → Microsoft Supply Chain RSA Root CA 2022
``iss``         the signer as a did:x509 (:mod:`securetrain.core.aci.did_x509`)
``feed``        ``ContainerPlat-AMD-UVM``
``signingtime`` when it was signed (CBOR tag 1, epoch seconds)
==============  =====================================================================

and whose payload is JSON: ``x-ms-sevsnpvm-launchmeasurement`` (96 hex digits) and
``x-ms-sevsnpvm-guestsvn`` (the UVM's SVN as a decimal string, also given as the integer
``x-ms-sevsnpvm-guestsvn-int``). The unprotected header carries an RFC 3161 timestamp; nothing outside
the signature is read.

Checks, each refusal an :class:`~securetrain.core.aci.errors.AciEvidenceError` whose ``check`` is:

``uvm-endorsement.cose-structure``
    one CBOR item, tag 18, ``[protected bstr, unprotected map, payload bstr, signature bstr]``, nothing after it,
    the protected header a map; a ``crit`` header may name only headers read here.
``uvm-endorsement.algorithm``
    alg is -38 (PS384) in the protected header; nothing else is accepted.
``uvm-endorsement.content-type``
    ``application/json``.
``uvm-endorsement.x5chain``
    present in the protected header, an array of at least two DER certificates, leaf first.
``uvm-endorsement.root``
    the last certificate's key is the pinned root (SHA-256 of its SubjectPublicKeyInfo).
``uvm-endorsement.signing-time``
    present, and not after the verification time.
``uvm-endorsement.chain``
    the root signed itself, and RFC 5280 path validation (pyca/cryptography's verifier: CA constraints, key
    usage, signatures, names) from the leaf to that root, at the signing time, gives exactly the x5chain.
``uvm-endorsement.issuer``
    ``iss`` resolves against the chain under the did:x509 rules, and is the issuer the trust names.
``uvm-endorsement.feed``
    the feed the trust names.
``uvm-endorsement.signature``
    RSASSA-PSS/SHA-384 over the COSE Sig_structure (empty external AAD) with the leaf's key.
``uvm-endorsement.payload``
    strict JSON holding exactly the launch measurement (48 bytes) and the SVN (and its integer twin, equal).

Why the chain is checked at the signing time and not now: an endorsement vouches for a UVM build for as
long as that UVM runs, while the leaf certificate lives one year (the genuine one expired on 2026-05-15).
Microsoft's verifier ignores certificate times altogether; the did:x509 specification allows validating at
"a context-relevant point in time ... such as the signing time" when that time is integrity protected,
which ``signingtime`` is (it is in the signed header). Checking at the signing time still refuses an
endorsement dated outside its certificates' lives, or in the future. Revocation is not checked (offline).

The COSE library is python-cwt (``cwt``): maintained, built on pyca/cryptography, and it verifies PS384
with the RFC 8230 salt. The message is decoded here with cbor2 (which cwt itself uses) so that the
structure and every header are checked before any key is built, and cwt verifies the signature over the
received protected bytes, with the unsigned (unprotected) header left out of what it sees.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError
from cwt import COSE, COSEKey, CWTError

from securetrain.core.aci.did_x509 import DidX509Mismatch, check_chain_matches
from securetrain.core.aci.errors import AciEvidenceError
from securetrain.core.errors import ConfigurationError
from securetrain.core.json_input import JsonInputError, read_json_object

#: Far above a genuine endorsement (10,900 bytes), far below what could cost the verifier anything.
MAX_ENDORSEMENT_BYTES = 64 << 10
MAX_PAYLOAD_BYTES = 4 << 10

COSE_SIGN1_TAG = 18
PS384 = -38
CONTENT_TYPE_JSON = "application/json"
LAUNCH_MEASUREMENT_SIZE = 48

_ALG, _CRIT, _CONTENT_TYPE, _X5CHAIN = 1, 2, 3, 33
_ISSUER, _FEED, _SIGNING_TIME = "iss", "feed", "signingtime"
# The headers this module reads and acts on: the only ones a ``crit`` header may ask it to understand.
_PROCESSED_HEADERS = frozenset({_ALG, _CONTENT_TYPE, _X5CHAIN, _ISSUER, _FEED, _SIGNING_TIME})
_MEASUREMENT_CLAIM = "x-ms-sevsnpvm-launchmeasurement"
_SVN_CLAIM = "x-ms-sevsnpvm-guestsvn"
_SVN_INT_CLAIM = "x-ms-sevsnpvm-guestsvn-int"
_PAYLOAD_CLAIMS = frozenset({_MEASUREMENT_CLAIM, _SVN_CLAIM, _SVN_INT_CLAIM})


@dataclass(frozen=True)
class UvmEndorsementTrust:
    """Whose UVM endorsements are accepted: the pinned root key, the did:x509 issuer and the feed."""

    root_name: str
    root_spki_sha256: bytes
    issuer: str
    feed: str

    def __post_init__(self) -> None:
        if len(self.root_spki_sha256) != hashlib.sha256().digest_size:
            raise ConfigurationError(f"UVM endorsement root {self.root_name!r}: spki_sha256 must be 32 bytes")

    @property
    def simulated(self) -> bool:
        """True unless the root is Microsoft's: endorsements under any other root do not come from Microsoft."""
        return self.root_spki_sha256 != MICROSOFT_SUPPLY_CHAIN_ROOT_2022


# SHA-256 of the SubjectPublicKeyInfo of "Microsoft Supply Chain RSA Root CA 2022", checked by the unit tests
# against the root certificate in the genuine evidence (../shared/testdata/azure-aci/).
MICROSOFT_SUPPLY_CHAIN_ROOT_2022 = bytes.fromhex("84ce862a73b73d63b1cdbde1d30559eaab4040f6a63638c83e8357fe2250e5d3")

# Microsoft's ACI UVMs. The issuer's fingerprint is the SHA-256 of the root certificate's DER, and EKU
# 1.3.6.1.4.1.311.76.59.1.2 the one Microsoft's CCF pins for this feed.
CONTAINERPLAT_AMD_UVM = UvmEndorsementTrust(
    root_name="Microsoft Supply Chain RSA Root CA 2022",
    root_spki_sha256=MICROSOFT_SUPPLY_CHAIN_ROOT_2022,
    issuer="did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.3.6.1.4.1.311.76.59.1.2",
    feed="ContainerPlat-AMD-UVM",
)


@dataclass(frozen=True)
class VerifiedUvmEndorsement:
    """What a verified endorsement states, and who stated it."""

    launch_measurement: bytes
    svn: int
    issuer: str
    feed: str
    signing_time: datetime
    trust: UvmEndorsementTrust

    def claim(self) -> dict[str, str]:
        """MAA's ``x-ms-sevsnpvm-uvm-endorsement`` claim (the SVN as a decimal string, as MAA gives it)."""
        return {_SVN_CLAIM: str(self.svn), _MEASUREMENT_CLAIM: self.launch_measurement.hex()}

    def to_dict(self) -> dict[str, Any]:
        """Everything stated and checked, JSON-ready."""
        return {
            "launch_measurement": self.launch_measurement.hex(),
            "svn": self.svn,
            "issuer": self.issuer,
            "feed": self.feed,
            "signing_time": self.signing_time.isoformat(),
            "root": self.trust.root_name,
            "simulated": self.trust.simulated,
        }


@dataclass(frozen=True)
class UvmEndorsement:
    """A decoded endorsement whose structure and headers are well formed; nothing about it is verified yet."""

    protected: bytes
    payload: bytes
    signature: bytes
    chain: tuple[x509.Certificate, ...]
    issuer: str
    feed: str
    signing_time: datetime

    @classmethod
    def decode(cls, data: bytes) -> UvmEndorsement:
        """Read the COSE_Sign1 and its protected header (checks ``cose-structure`` to ``x5chain``)."""
        if len(data) > MAX_ENDORSEMENT_BYTES:
            _refuse("cose-structure", f"is {len(data)} bytes; at most {MAX_ENDORSEMENT_BYTES} are accepted")
        message = _cbor_item(data, "the endorsement")
        if not isinstance(message, cbor2.CBORTag) or message.tag != COSE_SIGN1_TAG:
            _refuse("cose-structure", "is not a COSE_Sign1 (CBOR tag 18)")
        value = message.value
        if not isinstance(value, list) or len(value) != 4:
            _refuse("cose-structure", "COSE_Sign1 must be an array of 4: protected, unprotected, payload, signature")
        protected, unprotected, payload, signature = value
        if not isinstance(protected, bytes) or not isinstance(unprotected, dict):
            _refuse("cose-structure", "the protected header must be a byte string and the unprotected header a map")
        if not isinstance(payload, bytes) or not isinstance(signature, bytes):
            _refuse("cose-structure", "payload and signature must be byte strings (a detached payload is not accepted)")
        headers = _cbor_item(protected, "the protected header")
        if not isinstance(headers, dict):
            _refuse("cose-structure", "the protected header is not a map")
        # RFC 9052 labels are integers or text; anything else (true, 1.0) would compare equal to a label it is not.
        if any(type(label) not in (int, str) for label in headers):
            _refuse("cose-structure", "protected header labels must be integers or text strings")
        _check_crit(headers)
        if type(headers.get(_ALG)) is not int or headers[_ALG] != PS384:
            _refuse("algorithm", f"protected alg is {headers.get(_ALG)!r}; only {PS384} (PS384) is accepted")
        if headers.get(_CONTENT_TYPE) != CONTENT_TYPE_JSON:
            _refuse("content-type", f"is {headers.get(_CONTENT_TYPE)!r}, not {CONTENT_TYPE_JSON!r}")
        chain = _x5chain(headers.get(_X5CHAIN))
        issuer, feed, signing_time = headers.get(_ISSUER), headers.get(_FEED), headers.get(_SIGNING_TIME)
        if not isinstance(issuer, str):
            # Endorsements of ContainerPlat 0.2.10 and later move iss, feed and the SVN into CWT claims
            # (label 15) with a binary payload; no genuine sample of that form is at hand to verify it against.
            _refuse("issuer", "the protected header has no 'iss' text")
        if not isinstance(feed, str):
            _refuse("feed", "the protected header has no 'feed' text")
        if not isinstance(signing_time, datetime) or signing_time.tzinfo is None:
            _refuse("signing-time", "the protected header has no 'signingtime' (CBOR tag 1)")
        return cls(protected, payload, signature, chain, issuer, feed, signing_time)

    def verify(self, trust: UvmEndorsementTrust, *, now: datetime) -> VerifiedUvmEndorsement:
        """Check chain, issuer, feed, signature and payload (``root`` to ``payload``) against ``trust``."""
        leaf, root = self.chain[0], self.chain[-1]
        root_key = hashlib.sha256(root.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
        if root_key.digest() != trust.root_spki_sha256:
            _refuse(
                "root",
                f"x5chain ends in '{root.subject.rfc4514_string()}' (key SHA-256 {root_key.hexdigest()}), "
                f"not in {trust.root_name}",
            )
        if self.signing_time > now:
            _refuse("signing-time", f"signed at {self.signing_time.isoformat()}, after {now.isoformat()}")
        self._check_chain(leaf, root)
        try:
            check_chain_matches(self.issuer, self.chain)
        except DidX509Mismatch as exc:
            _refuse("issuer", f"{self.issuer!r} does not resolve against x5chain: {exc}")
        if self.issuer != trust.issuer:
            _refuse("issuer", f"{self.issuer!r} is not {trust.issuer!r}")
        if self.feed != trust.feed:
            _refuse("feed", f"{self.feed!r} is not {trust.feed!r}")
        self._check_signature(leaf)
        measurement, svn = _payload(self.payload)
        return VerifiedUvmEndorsement(measurement, svn, self.issuer, self.feed, self.signing_time, trust)

    def _check_chain(self, leaf: x509.Certificate, root: x509.Certificate) -> None:
        try:
            root.verify_directly_issued_by(root)
        except (InvalidSignature, ValueError, TypeError) as exc:
            reason = str(exc) or "its signature does not verify with its own key"
            _refuse("chain", f"the root '{root.subject.rfc4514_string()}' is not self-signed: {reason}")
        # Path validation as RFC 5280 and the CA/Browser profile lay it out for CAs; the leaf is a signing
        # certificate, not a web one, so its extensions are the did:x509 check's business.
        verifier = (
            PolicyBuilder()
            .store(Store([root]))
            .time(self.signing_time)
            .max_chain_depth(len(self.chain) - 1)
            .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        try:
            built = verifier.verify(leaf, list(self.chain[1:-1])).chain
        except VerificationError as exc:
            _refuse("chain", f"x5chain does not validate at the signing time {self.signing_time.isoformat()}: {exc}")
        if [_der(c) for c in built] != [_der(c) for c in self.chain]:
            _refuse("chain", "x5chain is not the validated path from the leaf to the root, in order")

    def _check_signature(self, leaf: x509.Certificate) -> None:
        key = leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            _refuse("signature", "the leaf key is not RSA, which PS384 needs")
        numbers = key.public_numbers()
        cose_key = COSEKey.new(
            {1: 3, 3: PS384, -1: _unsigned(numbers.n), -2: _unsigned(numbers.e)}  # kty RSA, alg, n, e
        )
        # The signature covers the protected header and the payload only; the unprotected header is left
        # out of what cwt sees, so that nothing unsigned (a kid, an alg, a countersignature) takes part.
        signed_part = cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [self.protected, {}, self.payload, self.signature]))
        try:
            COSE.new().decode_with_headers(signed_part, cose_key)
        except (CWTError, ValueError) as exc:  # VerifyError for a bad signature; ValueError for what cwt cannot read
            _refuse("signature", f"RSASSA-PSS/SHA-384 does not verify with the leaf key: {exc}")


def _refuse(check: str, message: str) -> NoReturn:
    raise AciEvidenceError(f"uvm-endorsement.{check}", message)


def _cbor_item(data: bytes, what: str) -> Any:
    """The one CBOR item that is all of ``data``."""
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, RecursionError, MemoryError) as exc:
        _refuse("cose-structure", f"{what} is not well-formed CBOR: {exc}")
    if stream.tell() != len(data):
        _refuse("cose-structure", f"{what} is followed by {len(data) - stream.tell()} more bytes")
    return item


def _check_crit(headers: Mapping[Any, Any]) -> None:
    # RFC 9052: a recipient must refuse a message whose crit names a header it does not process.
    if _CRIT not in headers:
        return
    critical = headers[_CRIT]
    if not isinstance(critical, list) or not critical:
        _refuse("cose-structure", "crit must be a non-empty array of header labels")
    unknown = [label for label in critical if type(label) not in (int, str) or label not in _PROCESSED_HEADERS]
    if unknown:
        _refuse("cose-structure", f"crit names headers this verifier does not process: {unknown!r}")


def _x5chain(value: Any) -> tuple[x509.Certificate, ...]:
    if value is None:
        _refuse("x5chain", "the protected header has no x5chain (label 33)")
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(item, bytes) for item in value):
        _refuse("x5chain", "must be an array of at least two DER certificates, leaf first")
    certificates = []
    for index, der in enumerate(value):
        try:
            # A warning here (a negative serial number, say) announces a refusal in a later cryptography
            # release: refused now, so that what is accepted does not change with a library upgrade.
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                certificate = x509.load_der_x509_certificate(der)
                # Parsed lazily by cryptography: read now, so that a malformed field is refused here, by name.
                certificate.public_key(), certificate.extensions, certificate.subject.rfc4514_string()
        except (
            ValueError,
            TypeError,
            x509.InvalidVersion,
            x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType,
            UnsupportedAlgorithm,
            Warning,
        ) as exc:
            _refuse("x5chain", f"certificate {index} is not DER X.509 with a usable key: {exc}")
        certificates.append(certificate)
    return tuple(certificates)


def _payload(payload: bytes) -> tuple[bytes, int]:
    try:
        document = read_json_object(payload, max_bytes=MAX_PAYLOAD_BYTES, what="the endorsement payload")
    except JsonInputError as exc:
        _refuse("payload", str(exc))
    unknown = sorted(set(document) - _PAYLOAD_CLAIMS)
    if unknown:
        # What a verifier does not understand it cannot say it checked; refused rather than skipped.
        _refuse("payload", f"holds fields this verifier does not know: {unknown}")
    measurement = document.get(_MEASUREMENT_CLAIM)
    if not isinstance(measurement, str) or len(measurement) != 2 * LAUNCH_MEASUREMENT_SIZE:
        _refuse("payload", f"{_MEASUREMENT_CLAIM} must be {2 * LAUNCH_MEASUREMENT_SIZE} hex digits")
    try:
        launch_measurement = bytes.fromhex(measurement)
    except ValueError:
        _refuse("payload", f"{_MEASUREMENT_CLAIM} is not hex: {measurement!r}")
    svn = _svn(document.get(_SVN_CLAIM))
    if _SVN_INT_CLAIM in document and (type(document[_SVN_INT_CLAIM]) is not int or document[_SVN_INT_CLAIM] != svn):
        _refuse("payload", f"{_SVN_INT_CLAIM} {document[_SVN_INT_CLAIM]!r} differs from {_SVN_CLAIM} {svn}")
    return launch_measurement, svn


def _svn(value: Any) -> int:
    # A decimal string in the genuine endorsement; Microsoft's verifier also takes an unsigned integer.
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and (value == "0" or value[0] != "0"):
        return int(value)
    _refuse("payload", f"{_SVN_CLAIM} must be an unsigned decimal number, got {value!r}")


def _unsigned(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)
