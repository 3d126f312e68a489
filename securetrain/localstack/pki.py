"""The local stack's certificate authority: one CA, TLS server certificates and mTLS client certificates.

Every stand-in speaks HTTPS with a certificate from this CA and every client trusts exactly this CA through
an explicit CA bundle; nothing here touches the system trust store. Key type, validity, reuse and file modes
are explained in docs/local-stack.md ("Trusting the CA"). ``directory`` arguments are chosen by the caller:
the stack keeps the CA in ``<state>/ca`` (``ca.pem``, ``ca.key``) and issues ``<dir>/<name>.pem`` with its
key ``<name>.key``.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.localstack.layout import write_file

logger = logging.getLogger(__name__)

CA_VALIDITY = datetime.timedelta(days=3650)
#: A CA with less than this left is replaced (and with it every certificate it issued).
CA_RENEW_BEFORE = datetime.timedelta(days=90)
LEAF_VALIDITY = datetime.timedelta(days=90)
#: A server or client certificate with less than this left is issued again.
LEAF_RENEW_BEFORE = datetime.timedelta(days=30)
# Backdating covers small clock differences between the processes that check the certificate.
_BACKDATE = datetime.timedelta(minutes=5)

_ORGANIZATION = "securetrain local stack"
# File names are derived from service names and identities, so they must not be able to climb out of
# the directory; 64 characters is the X.509 upper bound for a common name.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")


class PkiError(SecuretrainError):
    """The local certificate authority could not load, create or issue a certificate."""


class InsecureKeyFile(PkiError, SecurityViolation):
    """A private key file can be read or written by other users, or belongs to someone else."""


class CorruptCertificateAuthority(PkiError, ConfigurationError):
    """The CA's files are incomplete, unreadable or do not belong together."""


class InvalidCertificateName(PkiError, ConfigurationError):
    """A service name, identity or subject alternative name is not acceptable."""


@dataclass(frozen=True)
class CertificateFiles:
    """An issued certificate and where it and its private key lie."""

    cert_path: Path
    key_path: Path
    certificate: x509.Certificate


@dataclass(frozen=True)
class _LeafProfile:
    """What an issued certificate must say; a stored one that says anything else is reissued."""

    common_name: str
    usage: x509.ObjectIdentifier
    alt_names: frozenset[x509.GeneralName]


def _write_key_and_certificate(
    key_path: Path, key: ec.EllipticCurvePrivateKey, cert_path: Path, certificate: x509.Certificate
) -> None:
    """Write a key (0600) and then its certificate (0644), each atomically.

    The key first: a certificate without its key would make the pair look corrupt on the next run,
    while a key without its certificate is simply issued again.
    """
    # Unencrypted PKCS#8: Azurite (Node.js) takes --key as a plain PEM file; the file mode protects it.
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_file(key_path, key_pem, mode=0o600)
    write_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _check_key_file_private(path: Path) -> None:
    info = path.stat()
    if info.st_uid != os.getuid():
        raise InsecureKeyFile(
            f"private key {path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()}); "
            "a key someone else controls cannot be trusted: delete it so that a new one is made"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise InsecureKeyFile(
            f"private key {path} has mode {stat.S_IMODE(info.st_mode):04o}: other users may have read it; "
            "delete it so that a new one is made (chmod 600 only if you are sure nobody copied it)"
        )


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    _check_key_file_private(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an EC private key")
    return key


def _same_public_key(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _validate_name(kind: str, name: str) -> str:
    if not _NAME_PATTERN.fullmatch(name):
        raise InvalidCertificateName(
            f"{kind} {name!r} is not acceptable: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise InvalidCertificateName(f"subject alternative name {name!r} is neither an IP address nor a DNS host name")
    return x509.DNSName(name.rstrip(".").lower())


def _subject(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(**granted: bool) -> x509.KeyUsage:
    """A key usage extension granting only the usages named."""
    usages = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
              "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
    return x509.KeyUsage(**(dict.fromkeys(usages, False) | granted))


class LocalCA:
    """The stack's certificate authority. Make one with :meth:`load_or_create`."""

    def __init__(self, directory: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self._directory = directory
        self._certificate = certificate
        self._key = key

    @property
    def cert_path(self) -> Path:
        """The CA certificate (PEM): the CA bundle a client passes to trust the stack."""
        return self._directory / "ca.pem"

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return self._certificate

    @classmethod
    def load_or_create(cls, directory: Path) -> LocalCA:
        """Load the CA kept in ``directory`` (``ca.pem``, ``ca.key``), or make one if there is none.

        A CA that expires within :data:`CA_RENEW_BEFORE` is replaced; certificates it issued are then
        reissued as they are next asked for, and clients must be given the new ``ca.pem``.

        Raises:
            CorruptCertificateAuthority: one of the two files is missing, unreadable, or they do not match.
            InsecureKeyFile: ``ca.key`` is readable by other users or owned by someone else.
        """
        cert_path, key_path = directory / "ca.pem", directory / "ca.key"
        if not cert_path.exists() and not key_path.exists():
            return cls._create(directory)
        if not (cert_path.exists() and key_path.exists()):
            missing = key_path if cert_path.exists() else cert_path
            raise CorruptCertificateAuthority(
                f"the local CA in {directory} is incomplete: {missing} is missing; delete {directory} "
                "to make a new CA (clients that trusted the old ca.pem must then be given the new one)"
            )
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = _load_private_key(key_path)
        except ValueError as exc:
            raise CorruptCertificateAuthority(
                f"the local CA in {directory} cannot be read ({exc}); delete {directory} to make a new one"
            ) from exc
        if not _same_public_key(certificate, key):
            raise CorruptCertificateAuthority(
                f"{cert_path} and {key_path} do not belong together; delete {directory} to make a new CA"
            )
        if certificate.not_valid_after_utc - _now() < CA_RENEW_BEFORE:
            logger.warning(
                "local CA in %s expires %s: replacing it; give clients the new %s",
                directory,
                certificate.not_valid_after_utc.isoformat(),
                cert_path,
            )
            return cls._create(directory)
        return cls(directory, certificate, key)

    @classmethod
    def _create(cls, directory: Path) -> LocalCA:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = _subject(f"securetrain local CA ({now:%Y-%m-%d})")
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            # path_length=0: this CA signs end-entity certificates only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key_and_certificate(directory / "ca.key", key, directory / "ca.pem", certificate)
        logger.info(
            "created local CA %s (valid until %s)", directory / "ca.pem", certificate.not_valid_after_utc.date()
        )
        return cls(directory, certificate, key)

    def issue_server_certificate(self, directory: Path, name: str, extra_names: Iterable[str] = ()) -> CertificateFiles:
        """Return a TLS server certificate ``<directory>/<name>.pem`` (key ``<name>.key``).

        Its subject alternative names are ``localhost``, ``127.0.0.1`` and ``extra_names`` (DNS names or
        IP addresses); its extended key usage is serverAuth only.
        """
        _validate_name("service name", name)
        alt_names = frozenset(_alt_name(entry) for entry in (*_DEFAULT_SERVER_NAMES, *extra_names))
        profile = _LeafProfile(name, ExtendedKeyUsageOID.SERVER_AUTH, alt_names)
        return self._ensure_leaf(directory, name, profile)

    def issue_client_certificate(self, directory: Path, identity: str) -> CertificateFiles:
        """Return a TLS client certificate for mutual TLS: subject CN = ``identity``, EKU clientAuth.

        Written as ``<directory>/<identity>.pem`` with its key ``<identity>.key``.
        """
        _validate_name("identity", identity)
        profile = _LeafProfile(identity, ExtendedKeyUsageOID.CLIENT_AUTH, frozenset())
        return self._ensure_leaf(directory, identity, profile)

    def _ensure_leaf(self, directory: Path, stem: str, profile: _LeafProfile) -> CertificateFiles:
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        reason = self._reissue_reason(cert_path, key_path, profile)
        if reason is None:
            logger.debug("reusing certificate %s", cert_path)
            return CertificateFiles(cert_path, key_path, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        logger.info("issuing certificate %s (%s)", cert_path, reason)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self._sign_leaf(key, profile)
        _write_key_and_certificate(key_path, key, cert_path, certificate)
        return CertificateFiles(cert_path, key_path, certificate)

    def _reissue_reason(self, cert_path: Path, key_path: Path, profile: _LeafProfile) -> str | None:
        """Why the stored certificate cannot be reused, or None when it can."""
        if not cert_path.exists() or not key_path.exists():
            return "none yet"
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = _load_private_key(key_path)
        except InsecureKeyFile as exc:
            # A leaf key others could read is replaced rather than trusted; the CA key is never replaced
            # silently (see load_or_create).
            logger.warning("%s", exc)
            return "its key file was not private"
        except ValueError as exc:
            return f"unreadable: {exc}"
        try:
            certificate.verify_directly_issued_by(self._certificate)
        except (ValueError, TypeError, InvalidSignature):
            return "not issued by this CA"
        if not _same_public_key(certificate, key):
            return "certificate and key do not match"
        if certificate.not_valid_after_utc - _now() < LEAF_RENEW_BEFORE:
            return f"expires {certificate.not_valid_after_utc.isoformat()}"
        if certificate.subject != _subject(profile.common_name):
            return "different subject"
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return "no extended key usage"
        if list(usages) != [profile.usage]:
            return "different key usage"
        try:
            alt_names = frozenset(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            alt_names = frozenset()
        if alt_names != profile.alt_names:
            return "different subject alternative names"
        return None

    def _sign_leaf(self, key: ec.EllipticCurvePrivateKey, profile: _LeafProfile) -> x509.Certificate:
        now = _now()
        ca_key_id = self._certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(profile.common_name))
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + LEAF_VALIDITY, self._certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([profile.usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
        )
        if profile.alt_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(sorted(profile.alt_names, key=str)), critical=False
            )
        return builder.sign(self._key, hashes.SHA256())
