"""did:x509 (method version 0): does an X.509 chain answer to a ``did:x509:...`` issuer identifier?

A did:x509 names a signer by a CA in its chain and predicates on its leaf certificate, e.g. Microsoft's
UVM endorsements are issued by
``did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.3.6.1.4.1.311.76.59.1.2``:
"a leaf with extended key usage 1.3.6.1.4.1.311.76.59.1.2 under the CA certificate whose DER has this
SHA-256". Rules, from the method specification (github.com/microsoft/did-x509, ``specification.md``):

- syntax ``did:x509:0:<sha256|sha384|sha512>:<base64url fingerprint>(::<predicate>:<value>)+``;
- the fingerprint is the digest of the DER of a certificate of the chain other than the leaf;
- every predicate must hold for the leaf (``chain[0]``);
- no certificate may carry a critical extension outside EKU, SAN and the standard RFC 5280 set;
- the leaf's key is the DID's assertion key only if keyUsage is absent or allows digitalSignature.

Only the ``eku`` predicate is implemented (the only one Microsoft's endorsements use); ``subject``,
``san`` and ``fulcio-issuer`` are refused rather than half-understood. Path validation of the chain is
the caller's (step 2 of the specification's resolution), and done before this check is meaningful.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from securetrain.core.errors import SecurityViolation

_PREFIX = "did:x509:0:"
_FINGERPRINT_ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
_KNOWN_PREDICATES = frozenset({"subject", "san", "eku", "fulcio-issuer"})
_OID = re.compile(r"[0-9]+(\.[0-9]+)+")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
# Critical extensions a chain may carry (the specification's resolution step 2).
_ALLOWED_CRITICAL = frozenset(
    oid.dotted_string
    for oid in (
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.POLICY_CONSTRAINTS,
        ExtensionOID.POLICY_MAPPINGS,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.INHIBIT_ANY_POLICY,
    )
)


class DidX509Mismatch(SecurityViolation):
    """The identifier is not a did:x509 this module reads, or the chain does not answer to it."""


def check_chain_matches(did: str, chain: Sequence[x509.Certificate]) -> None:
    """Refuse unless ``chain`` (leaf first, already path-validated) answers to ``did``."""
    if not did.startswith(_PREFIX):
        raise DidX509Mismatch(f"{did!r} is not a did:x509 of method version 0")
    head, *predicates = did[len(_PREFIX) :].split("::")
    algorithm, _, fingerprint = head.partition(":")
    digest = _FINGERPRINT_ALGORITHMS.get(algorithm)
    if digest is None:
        raise DidX509Mismatch(f"CA fingerprint algorithm {algorithm!r} is not sha256, sha384 or sha512")
    expected = _fingerprint(fingerprint, digest().digest_size)
    if len(chain) < 2:
        raise DidX509Mismatch("a did:x509 chain holds a leaf and at least one CA certificate")
    authorities = chain[1:]
    if not any(digest(_der(certificate)).digest() == expected for certificate in authorities):
        raise DidX509Mismatch(f"no CA certificate of the chain has the {algorithm} fingerprint {fingerprint}")
    if not predicates:
        raise DidX509Mismatch(f"{did!r} has no predicate on the leaf certificate")
    for predicate in predicates:
        _check_predicate(predicate, chain[0])
    for certificate in chain:
        _check_critical_extensions(certificate)
    _check_assertion_key_usage(chain[0])


def _fingerprint(text: str, size: int) -> bytes:
    # Unpadded base64url only, in its one canonical form: the identifier is compared as a string elsewhere.
    if not _BASE64URL.fullmatch(text):
        raise DidX509Mismatch(f"CA fingerprint {text!r} is not unpadded base64url")
    try:
        value = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise DidX509Mismatch(f"CA fingerprint {text!r} is not base64url") from None
    if len(value) != size or base64.urlsafe_b64encode(value).rstrip(b"=").decode() != text:
        raise DidX509Mismatch(f"CA fingerprint {text!r} is not a canonical {size}-byte digest")
    return value


def _check_predicate(predicate: str, leaf: x509.Certificate) -> None:
    name, separator, value = predicate.partition(":")
    if not separator or not value:
        raise DidX509Mismatch(f"predicate {predicate!r} is not <name>:<value>")
    if name not in _KNOWN_PREDICATES:
        raise DidX509Mismatch(f"predicate {name!r} is not a did:x509 predicate")
    if name != "eku":
        raise DidX509Mismatch(f"predicate {name!r} is not supported here (only eku is)")
    if not _OID.fullmatch(value):
        raise DidX509Mismatch(f"eku predicate value {value!r} is not a dotted OID")
    try:
        usages = leaf.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    except x509.ExtensionNotFound:
        raise DidX509Mismatch(f"the leaf certificate has no extended key usage, the DID requires {value}") from None
    except ValueError as exc:
        raise DidX509Mismatch(f"the leaf certificate's extensions cannot be read: {exc}") from None
    granted = [usage.dotted_string for usage in usages]
    if value not in granted:
        raise DidX509Mismatch(f"the leaf certificate's extended key usages {granted} do not include {value}")


def _check_critical_extensions(certificate: x509.Certificate) -> None:
    try:
        extensions = list(certificate.extensions)
    except ValueError as exc:
        raise DidX509Mismatch(f"extensions of '{certificate.subject.rfc4514_string()}' cannot be read: {exc}") from None
    for extension in extensions:
        if extension.critical and extension.oid.dotted_string not in _ALLOWED_CRITICAL:
            raise DidX509Mismatch(
                f"'{certificate.subject.rfc4514_string()}' has critical extension {extension.oid.dotted_string}, "
                "which did:x509 does not allow"
            )


def _check_assertion_key_usage(leaf: x509.Certificate) -> None:
    try:
        usage = leaf.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        raise DidX509Mismatch("the leaf certificate's key usage does not allow digital signatures")


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)
