"""The local CA: what it issues, that real TLS accepts it, when it reuses and when it reissues."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securetrain.core.errors import ConfigurationError, SecurityViolation
from securetrain.localstack.pki import (
    LEAF_RENEW_BEFORE,
    CertificateFiles,
    CorruptCertificateAuthority,
    InsecureKeyFile,
    InvalidCertificateName,
    LocalCA,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA.load_or_create(tmp_path / "ca")


def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str
) -> tuple[BaseException | None, BaseException | None]:
    """A real TLS handshake over a socket pair; the errors of (server, client), None where it succeeded."""
    server_sock, client_sock = socket.socketpair()
    errors: dict[str, BaseException | None] = {"server": None, "client": None}

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_sock, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            errors["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_context.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"x")
    except (ssl.SSLError, OSError) as exc:
        errors["client"] = exc
    finally:
        client_sock.close()
        thread.join(timeout=10)
        server_sock.close()
    return errors["server"], errors["client"]


def server_context(files: CertificateFiles, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert_path, files.key_path)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def client_context(ca_bundle: Path, client: CertificateFiles | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_bundle))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if client is not None:
        context.load_cert_chain(client.cert_path, client.key_path)
    return context


def test_ca_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    first = LocalCA.load_or_create(tmp_path / "ca")
    assert mode(tmp_path / "ca" / "ca.key") == 0o600
    assert mode(tmp_path / "ca" / "ca.pem") == 0o644
    constraints = first.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert first.certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(first.certificate.public_key(), ec.EllipticCurvePublicKey)

    second = LocalCA.load_or_create(tmp_path / "ca")
    assert second.certificate == first.certificate
    assert second.cert_path == tmp_path / "ca" / "ca.pem"


def test_server_certificate_names_usage_and_files(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue_server_certificate(tmp_path / "certs", "azurite", ["azurite.internal", "10.1.2.3"])
    assert issued.cert_path == tmp_path / "certs" / "azurite.pem"
    assert mode(issued.key_path) == 0o600
    certificate = issued.certificate
    certificate.verify_directly_issued_by(ca.certificate)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "azurite"
    alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(alt_names.get_values_for_type(x509.DNSName)) == {"localhost", "azurite.internal"}
    assert set(alt_names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.1.2.3"),
    }
    assert list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_server_certificate_passes_strict_tls_verification(ca: LocalCA, tmp_path: Path, hostname: str) -> None:
    issued = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    assert handshake(server_context(issued), client_context(ca.cert_path), hostname) == (None, None)


def test_tls_refuses_a_name_not_in_the_certificate(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    _, client_error = handshake(server_context(issued), client_context(ca.cert_path), "storage.example")
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "storage.example" in str(client_error)


def test_tls_refuses_a_certificate_from_another_ca(ca: LocalCA, tmp_path: Path) -> None:
    other = LocalCA.load_or_create(tmp_path / "other-ca")
    issued = other.issue_server_certificate(tmp_path / "other-certs", "azurite")
    _, client_error = handshake(server_context(issued), client_context(ca.cert_path), "localhost")
    assert isinstance(client_error, ssl.SSLCertVerificationError)


def test_client_certificate_for_mutual_tls(ca: LocalCA, tmp_path: Path) -> None:
    server = ca.issue_server_certificate(tmp_path / "certs", "keyvault")
    client = ca.issue_client_certificate(tmp_path / "clients", "trainer-agent")
    subject = client.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert subject == "trainer-agent"
    assert list(client.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert mode(client.key_path) == 0o600

    requiring = server_context(server, client_ca=ca.cert_path)
    assert handshake(requiring, client_context(ca.cert_path, client), "localhost") == (None, None)
    server_error, _ = handshake(requiring, client_context(ca.cert_path), "localhost")
    assert isinstance(server_error, ssl.SSLError)  # no client certificate: refused


def test_a_server_certificate_cannot_authenticate_a_client(ca: LocalCA, tmp_path: Path) -> None:
    server = ca.issue_server_certificate(tmp_path / "certs", "keyvault")
    impostor = ca.issue_server_certificate(tmp_path / "certs", "impostor")
    server_error, _ = handshake(
        server_context(server, client_ca=ca.cert_path), client_context(ca.cert_path, impostor), "localhost"
    )
    assert isinstance(server_error, ssl.SSLError)  # EKU serverAuth only: not a client certificate


def test_valid_certificate_is_reused(ca: LocalCA, tmp_path: Path) -> None:
    first = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    written = first.cert_path.stat().st_mtime_ns
    again = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    assert again.certificate.serial_number == first.certificate.serial_number
    assert first.cert_path.stat().st_mtime_ns == written
    reloaded = LocalCA.load_or_create(tmp_path / "ca")
    assert reloaded.issue_server_certificate(tmp_path / "certs", "azurite").certificate == first.certificate


def _sign_expiring_leaf(ca_dir: Path, files: CertificateFiles, remaining: datetime.timedelta) -> None:
    """Overwrite ``files`` with a certificate signed by the real CA key that expires after ``remaining``."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(files.certificate.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + remaining)
    )
    for extension in files.certificate.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    certificate = builder.sign(ca_key, hashes.SHA256())
    files.cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def test_expiring_certificate_is_reissued(ca: LocalCA, tmp_path: Path) -> None:
    first = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    _sign_expiring_leaf(tmp_path / "ca", first, LEAF_RENEW_BEFORE - datetime.timedelta(days=1))
    expiring = x509.load_pem_x509_certificate(first.cert_path.read_bytes())

    renewed = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    assert renewed.certificate.serial_number != expiring.serial_number
    assert renewed.certificate.not_valid_after_utc > expiring.not_valid_after_utc


def test_certificate_still_far_from_expiry_is_kept(ca: LocalCA, tmp_path: Path) -> None:
    first = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    _sign_expiring_leaf(tmp_path / "ca", first, LEAF_RENEW_BEFORE + datetime.timedelta(days=5))
    kept = x509.load_pem_x509_certificate(first.cert_path.read_bytes())
    assert ca.issue_server_certificate(tmp_path / "certs", "azurite").certificate == kept


def test_certificate_with_other_names_is_reissued(ca: LocalCA, tmp_path: Path) -> None:
    first = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    wider = ca.issue_server_certificate(tmp_path / "certs", "azurite", ["azurite"])
    assert wider.certificate.serial_number != first.certificate.serial_number
    names = wider.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "azurite" in names.get_values_for_type(x509.DNSName)


def test_certificate_from_another_ca_is_reissued(ca: LocalCA, tmp_path: Path) -> None:
    other = LocalCA.load_or_create(tmp_path / "other-ca")
    foreign = other.issue_server_certificate(tmp_path / "certs", "azurite")
    reissued = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    assert reissued.certificate.serial_number != foreign.certificate.serial_number
    reissued.certificate.verify_directly_issued_by(ca.certificate)


def test_leaf_key_readable_by_others_is_replaced(ca: LocalCA, tmp_path: Path) -> None:
    first = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    old_key = first.key_path.read_bytes()
    first.key_path.chmod(0o644)
    replaced = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    assert replaced.key_path.read_bytes() != old_key
    assert mode(replaced.key_path) == 0o600


def test_ca_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    LocalCA.load_or_create(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").chmod(0o640)
    with pytest.raises(InsecureKeyFile, match=r"ca\.key has mode 0640") as raised:
        LocalCA.load_or_create(tmp_path / "ca")
    assert isinstance(raised.value, SecurityViolation)


def test_ca_without_its_key_is_refused(tmp_path: Path) -> None:
    LocalCA.load_or_create(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").unlink()
    with pytest.raises(CorruptCertificateAuthority, match=r"ca\.key is missing"):
        LocalCA.load_or_create(tmp_path / "ca")


def test_ca_whose_files_do_not_match_is_refused(tmp_path: Path) -> None:
    LocalCA.load_or_create(tmp_path / "ca")
    LocalCA.load_or_create(tmp_path / "other")
    (tmp_path / "ca" / "ca.pem").write_bytes((tmp_path / "other" / "ca.pem").read_bytes())
    with pytest.raises(CorruptCertificateAuthority, match="do not belong together"):
        LocalCA.load_or_create(tmp_path / "ca")


def test_unreadable_ca_is_refused(tmp_path: Path) -> None:
    LocalCA.load_or_create(tmp_path / "ca")
    (tmp_path / "ca" / "ca.pem").write_text("not a certificate")
    with pytest.raises(CorruptCertificateAuthority, match="cannot be read") as raised:
        LocalCA.load_or_create(tmp_path / "ca")
    assert isinstance(raised.value, ConfigurationError)


def test_expiring_ca_is_replaced_and_its_certificates_reissued(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path / "ca")
    leaf = ca.issue_server_certificate(tmp_path / "certs", "azurite")
    key = serialization.load_pem_private_key((tmp_path / "ca" / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca.certificate.subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=10))
    )
    for extension in ca.certificate.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    (tmp_path / "ca" / "ca.pem").write_bytes(
        builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    )

    renewed = LocalCA.load_or_create(tmp_path / "ca")
    assert renewed.certificate.public_key() != key.public_key()
    assert renewed.certificate.not_valid_after_utc - now > datetime.timedelta(days=3000)
    reissued = renewed.issue_server_certificate(tmp_path / "certs", "azurite")
    assert reissued.certificate.serial_number != leaf.certificate.serial_number
    reissued.certificate.verify_directly_issued_by(renewed.certificate)


@pytest.mark.parametrize("name", ["../escape", "", "a/b", ".hidden", "x" * 65, "with space"])
def test_names_that_would_make_bad_file_names_are_refused(ca: LocalCA, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidCertificateName):
        ca.issue_server_certificate(tmp_path / "certs", name)
    with pytest.raises(InvalidCertificateName):
        ca.issue_client_certificate(tmp_path / "certs", name)


@pytest.mark.parametrize("alt_name", ["bad name", "-leading.example", "under_score.example", "a..b"])
def test_bad_subject_alternative_names_are_refused(ca: LocalCA, tmp_path: Path, alt_name: str) -> None:
    with pytest.raises(InvalidCertificateName, match="neither an IP address nor a DNS host name"):
        ca.issue_server_certificate(tmp_path / "certs", "azurite", [alt_name])
