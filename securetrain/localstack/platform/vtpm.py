"""The emulated Azure confidential VM's vTPM: swtpm, provisioned the way Azure's paravisor provisions its vTPM.

On Azure the vTPM lives in the paravisor (the HCL; its open-source successor OpenHCL is microsoft/openvmm,
``vm/devices/tpm``). Each boot the paravisor, before the guest runs:

- creates the attestation key (AK) in the endorsement hierarchy from a fixed template (RSA 2048, restricted
  signing, RSASSA with SHA-256, fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA) and keeps it at
  persistent handle ``0x81000003``;
- creates the endorsement key (EK) from the TCG's low-range RSA 2048 template, to learn its public key (it is not
  persisted: the guest persists its own);
- writes the AK certificate, issued by Azure's "Global Virtual TPM CA", into NV ``0x01C101D0``, an index it
  defines in the platform hierarchy with ``authread|authwrite|ownerread|platformcreate|noDA`` and a password of its
  own: the guest reads it with owner authorization and can neither rewrite nor delete it.

:func:`provision` does the same here. swtpm (Debian's, libtpms) plays the vTPM: a process per CVM, its state in
the CVM's directory, reachable only through a Unix socket there (the paravisor's proxy is the guest's way in).
Differences from Azure, all forced by libtpms: an NV index holds at most 2048 bytes (``TPM2_PT_NV_INDEX_MAX``),
so the AK certificate index is 2048 bytes (Azure's: 4096) and the HCL report index is completed by the paravisor
(:mod:`securetrain.localstack.platform.paravisor`). The PCR banks are SHA-1 and SHA-256, as Hyper-V's vTPM.

:class:`VtpmCertificateAuthority` stands in for Azure's vTPM CA. Its certificates say SIMULATED: a verifier
trusts it only when configured to.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPM2B_PUBLIC, TPMS_NV_PUBLIC, TPMT_PUBLIC
from tpm2_pytss.utils import NVReadEK, create_ek_template

from securetrain.core.errors import ConfigurationError
from securetrain.core.fsutil import atomic_output
from securetrain.localstack.errors import StackConfigurationError, StackError, ToolNotInstalled
from securetrain.localstack.process import ProcessIdentity, start_process, stop_process
from securetrain.tee.evidence.azure_cvm import AK_CERT_NV_INDEX, AK_PERSISTENT_HANDLE, find_entity

logger = logging.getLogger(__name__)

#: The PCR banks the vTPM is manufactured with: Hyper-V's.
PCR_BANKS = ("sha1", "sha256")
#: libtpms' largest NV index and largest NV read or write (TPM2_PT_NV_INDEX_MAX, TPM2_PT_NV_BUFFER_MAX).
NV_INDEX_MAX = 2048
NV_BUFFER_MAX = 1024
AK_CERT_INDEX_SIZE = NV_INDEX_MAX
#: The attributes of the indexes the paravisor defines (openvmm ``platform_akcert_attributes``).
PLATFORM_INDEX_ATTRIBUTES = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.OWNERREAD | TPMA_NV.PLATFORMCREATE | TPMA_NV.NO_DA
#: The AK's attributes (openvmm ``expected_ak_attributes``).
AK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT
)  # fmt: skip

SIMULATION_ORGANIZATION = "securetrain SIMULATED vTPM - not Azure"
START_TIMEOUT_S = 10.0
_AK_CERT_VALIDITY = datetime.timedelta(days=365)
_CA_VALIDITY = datetime.timedelta(days=10 * 365)
_CLOCK_SKEW = datetime.timedelta(days=1)
_CA_RSA_BITS = 3072
#: TCG's EKU for AK certificates (tcg-kp-AIKCertificate), which Azure's AK certificates carry.
TCG_KP_AIK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.3")
# sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
_UNIX_PATH_MAX = 107


@dataclass(frozen=True)
class VtpmKeys:
    """The public halves of the vTPM's AK and EK: what the paravisor states in the runtime claims."""

    ak: rsa.RSAPublicKey
    ek: rsa.RSAPublicKey


class Swtpm:
    """swtpm serving the TPM 2.0 kept in ``state_dir`` on the Unix socket ``state_dir/swtpm.sock``.

    The directory also keeps the VM's unique id (Azure keeps it, like the vTPM's state, with the VM). The TPM is
    manufactured (``swtpm_setup``) on first start; each start is a boot: TPM2_Startup(CLEAR) resets the PCRs.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.socket_path = state_dir / "swtpm.sock"
        if len(os.fsencode(self.socket_path)) > _UNIX_PATH_MAX:
            raise StackConfigurationError(f"{self.socket_path} is too long for a Unix socket; use a shorter state directory")
        self._process: ProcessIdentity | None = None

    @property
    def vm_unique_id(self) -> str:
        """The VM's unique id (an uppercase GUID, as Azure's ``vmUniqueId``), made on first use."""
        path = self.state_dir / "vm-unique-id"
        if not path.exists():
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with atomic_output(path, mode=0o644) as out:
                out.write(str(uuid.uuid4()).upper().encode())
        return path.read_text().strip()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Manufacture the TPM if it is new, start swtpm and wait until it accepts connections."""
        swtpm = _tool("swtpm")
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._stop_leftover()
        if not (self.state_dir / "tpm2-00.permall").exists():
            self._manufacture()
        self.socket_path.unlink(missing_ok=True)
        argv = [
            swtpm, "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir},mode=0600",
            "--server", f"type=unixio,path={self.socket_path},mode=0600",
            # The TPM is started (TPM2_Startup(CLEAR)) as firmware would at each boot.
            "--flags", "not-need-init,startup-clear",
        ]  # fmt: skip
        self._process = start_process(argv, os.environ, self.state_dir / "swtpm.log", self.state_dir)
        with atomic_output(self._pid_file, mode=0o600) as out:
            out.write(json.dumps(asdict(self._process)).encode())
        deadline = time.monotonic() + timeout_s
        while not self._accepts_connections():
            if not self._process.is_running():
                raise StackError(f"swtpm exited during start-up; see {self.state_dir / 'swtpm.log'}")
            if time.monotonic() >= deadline:
                self.stop()
                raise StackError(f"swtpm did not open {self.socket_path} within {timeout_s:.0f} s")
            time.sleep(0.05)
        logger.info("vTPM (swtpm) up on %s", self.socket_path)

    def stop(self) -> None:
        """Stop swtpm (its TPM state stays in the directory)."""
        if self._process is not None:
            stop_process(self._process, grace_s=5.0)
            self._process = None
            self._pid_file.unlink(missing_ok=True)

    @property
    def _pid_file(self) -> Path:
        return self.state_dir / "swtpm.pid"

    def _stop_leftover(self) -> None:
        """Stop the swtpm a previous user of this directory left running (it was killed before it could stop it):
        it would hold the TPM state. Only the very process the PID file names (PID, start time, boot) is signalled."""
        try:
            leftover = ProcessIdentity(**json.loads(self._pid_file.read_text()))
        except FileNotFoundError:
            return
        except (ValueError, TypeError) as exc:
            raise StackError(f"{self._pid_file} is unreadable ({exc}); stop that swtpm yourself if it runs, "
                             "then delete the file") from None  # fmt: skip
        if leftover.is_running():
            logger.warning("stopping the swtpm (pid %d) left running on %s", leftover.pid, self.state_dir)
            stop_process(leftover, grace_s=5.0)
        self._pid_file.unlink()

    def _manufacture(self) -> None:
        logger.info("manufacturing a vTPM in %s (PCR banks %s)", self.state_dir, ", ".join(PCR_BANKS))
        argv = [_tool("swtpm_setup"), "--tpm2", "--tpmstate", str(self.state_dir), "--pcr-banks", ",".join(PCR_BANKS),
                "--logfile", str(self.state_dir / "swtpm_setup.log")]  # fmt: skip
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            raise StackError("swtpm_setup did not finish within 60 s") from None
        if result.returncode != 0:
            raise StackError(f"swtpm_setup failed (exit {result.returncode}); see {self.state_dir / 'swtpm_setup.log'}")

    def _accepts_connections(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                return False
        return True


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolNotInstalled(f"{name} is not installed: the emulated vTPM needs Debian's swtpm and swtpm-tools (make setup)")
    return path


class VtpmCertificateAuthority:
    """The local stand-in for Azure's vTPM CA: it certifies each emulated vTPM's AK. Get one with
    :meth:`load_or_create`; ``ca.pem`` is what a verifier of the local stack's evidence trusts."""

    def __init__(self, directory: Path, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> None:
        self.cert_path = directory / "ca.pem"
        self._key = key
        self.certificate = certificate

    @classmethod
    def load_or_create(cls, directory: Path) -> VtpmCertificateAuthority:
        """The CA kept in ``directory`` (``ca.key`` 0600, ``ca.pem``), made there if it has none."""
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if not key_path.exists() and not cert_path.exists():
            cls._create(directory)
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"the vTPM CA in {directory} is unreadable ({exc}); remove it to make a new one") from None
        if not isinstance(key, rsa.RSAPrivateKey) or key.public_key() != certificate.public_key():
            raise ConfigurationError(f"{key_path} is not the key of {cert_path}; remove {directory} to make a new CA")
        return cls(directory, key, certificate)

    @staticmethod
    def _create(directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=_CA_RSA_BITS)
        name = _name("securetrain SIMULATED Virtual TPM CA")
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256(), rsa_padding=padding.PKCS1v15())
        )  # fmt: skip
        with atomic_output(directory / "ca.key", mode=0o600) as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))  # fmt: skip
        with atomic_output(directory / "ca.pem", mode=0o644) as out:
            out.write(certificate.public_bytes(serialization.Encoding.PEM))
        logger.info("created the vTPM CA in %s", directory)

    def issue_ak_certificate(self, ak: rsa.RSAPublicKey, vm_unique_id: str) -> x509.Certificate:
        """An AK certificate in the profile of Azure's: digitalSignature, EKU tcg-kp-AIKCertificate, one year,
        RSASSA-PKCS1-v1_5 with SHA-256, the VM named in the subject."""
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder().subject_name(_name(f"{vm_unique_id.lower()}.cvm.securetrain.local"))
            .issuer_name(self.certificate.subject).public_key(ak)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + _AK_CERT_VALIDITY)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([TCG_KP_AIK_CERTIFICATE]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ak), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256(), rsa_padding=padding.PKCS1v15())
        )  # fmt: skip


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATION_ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])  # fmt: skip


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=key_cert_sign, crl_sign=key_cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def ak_template() -> TPM2B_PUBLIC:
    """Azure's AK template (openvmm ``ak_pub_template``)."""
    public = TPMT_PUBLIC(type=TPM2_ALG.RSA, nameAlg=TPM2_ALG.SHA256, objectAttributes=AK_ATTRIBUTES)
    public.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG.NULL
    public.parameters.rsaDetail.scheme.scheme = TPM2_ALG.RSASSA
    public.parameters.rsaDetail.scheme.details.anySig.hashAlg = TPM2_ALG.SHA256
    public.parameters.rsaDetail.keyBits = 2048
    return TPM2B_PUBLIC(publicArea=public)


def _rsa_public(public: TPMT_PUBLIC) -> rsa.RSAPublicKey:
    key = serialization.load_der_public_key(public.to_der())
    if not isinstance(key, rsa.RSAPublicKey):
        raise StackError("the vTPM made a key that is not RSA")
    return key


def _attestation_key(esapi: ESAPI) -> rsa.RSAPublicKey:
    """The AK at 0x81000003, made and persisted when absent (a primary key: the same one every time)."""
    existing = find_entity(esapi, AK_PERSISTENT_HANDLE)
    if existing is not None:
        public = esapi.read_public(existing)[0].publicArea
        expected = ak_template().publicArea
        if (public.objectAttributes, public.type, public.parameters.rsaDetail.scheme.scheme) != (
            expected.objectAttributes, expected.type, expected.parameters.rsaDetail.scheme.scheme
        ):
            # The paravisor certifies only its own AK: a key the guest put there gets no certificate.
            raise ConfigurationError(
                f"the object at 0x{AK_PERSISTENT_HANDLE:08x} is not Azure's AK (attributes {public.objectAttributes}); "
                "the vTPM state was changed from inside the guest: remove the vTPM's directory to make a new vTPM"
            )
        return _rsa_public(public)
    created, public, *_ = esapi.create_primary(None, ak_template(), ESYS_TR.ENDORSEMENT)
    try:
        esapi.evict_control(ESYS_TR.OWNER, created, AK_PERSISTENT_HANDLE)
    finally:
        esapi.flush_context(created)
    return _rsa_public(public.publicArea)


def _endorsement_key(esapi: ESAPI) -> rsa.RSAPublicKey:
    """The EK's public key, from the TCG template (or the one the TPM's NV holds), the key itself flushed."""
    _, template = create_ek_template("EK-RSA2048", NVReadEK(esapi))
    created, public, *_ = esapi.create_primary(None, template, ESYS_TR.ENDORSEMENT)
    esapi.flush_context(created)
    return _rsa_public(public.publicArea)


def define_platform_index(esapi: ESAPI, index: int, size: int, auth: bytes) -> ESYS_TR:
    """(Re)define NV ``index`` as the paravisor does: platform hierarchy, :data:`PLATFORM_INDEX_ATTRIBUTES`,
    password ``auth``. What held that index before (the last boot's, or the guest's) is removed first."""
    existing = find_entity(esapi, index)
    if existing is not None:
        attributes = esapi.nv_read_public(existing)[0].nvPublic.attributes
        esapi.nv_undefine_space(existing, ESYS_TR.PLATFORM if attributes & TPMA_NV.PLATFORMCREATE else ESYS_TR.OWNER)
    public = TPMS_NV_PUBLIC(nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=PLATFORM_INDEX_ATTRIBUTES, dataSize=size)
    return esapi.nv_define_space(auth, TPM2B_NV_PUBLIC(nvPublic=public), ESYS_TR.PLATFORM)


def write_index(esapi: ESAPI, handle: ESYS_TR, data: bytes) -> None:
    """Write ``data`` from offset 0 with the index's own authorization, in the vTPM's largest chunks."""
    for offset in range(0, len(data), NV_BUFFER_MAX):
        esapi.nv_write(handle, data[offset : offset + NV_BUFFER_MAX], offset, auth_handle=handle)


def provision(esapi: ESAPI, ca: VtpmCertificateAuthority, vm_unique_id: str) -> VtpmKeys:
    """Give the vTPM Azure's attestation identity: AK, EK, and the AK certificate in NV 0x01C101D0 (issued anew
    each boot, as the paravisor renews it), padded with zeros to the index's size as the paravisor writes it."""
    keys = VtpmKeys(ak=_attestation_key(esapi), ek=_endorsement_key(esapi))
    certificate = ca.issue_ak_certificate(keys.ak, vm_unique_id).public_bytes(serialization.Encoding.DER)
    # A password of the paravisor's that nobody keeps: the index is written once per boot, then only read.
    handle = define_platform_index(esapi, AK_CERT_NV_INDEX, AK_CERT_INDEX_SIZE, secrets.token_bytes(8))
    write_index(esapi, handle, certificate.ljust(AK_CERT_INDEX_SIZE, b"\0"))
    logger.info("vTPM provisioned: AK at 0x%08x, AK certificate in NV 0x%08x", AK_PERSISTENT_HANDLE, AK_CERT_NV_INDEX)
    return keys
