"""The TEE's half of Secure Key Release: verify the vault's JWS (signed by a TLS server certificate for the
vault's host, under the trusted roots), open key_hsm, check the key it names."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.localstack.pki import LocalCA
from securetrain.core.skr import (
    WRAP_ALGORITHMS,
    ReleasedKeyRejected,
    open_release_response,
    unwrap_key_hsm,
    unwrap_released_key,
    wrap_key_material,
)

KEK_ID = "https://vault.example/keys/kek/0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def tee_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 3072)


@pytest.fixture(scope="module")
def kek() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def vault(tmp_path_factory) -> tuple[LocalCA, Path, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca = LocalCA.load_or_create(directory / "ca")
    files = ca.issue_server_certificate(directory / "certs", "keyvault", ("vault.example",))
    return ca, files.cert_path, files.key_path


def _b64url(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def release_jws(vault, kek, tee_key, *, enc="CKM_RSA_AES_KEY_WRAP", kid=KEK_ID, named=None, key=None, chain=None,
                signer=None, material=None) -> str:
    _, cert_path, key_path = signer or vault
    der = material or kek.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    numbers = (named or kek).public_key().public_numbers()
    jwk = {"kid": kid, "kty": "RSA-HSM", "n": _b64url(numbers.n), "e": _b64url(numbers.e),
           "key_hsm": wrap_key_material(der, tee_key.public_key(), algorithm=enc, wrapping_kid="tee")}  # fmt: skip
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    signer = key or serialization.load_pem_private_key(key_path.read_bytes(), None)
    x5c = chain or [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]
    attributes = {"created": 1_700_000_000, "enabled": True}
    return jwt.encode({"response": {"key": {"key": jwk, "attributes": attributes}}}, signer, algorithm="ES256",
                      headers={"x5c": x5c})  # fmt: skip


@pytest.mark.parametrize("enc", sorted(WRAP_ALGORITHMS))
def test_the_released_kek_comes_out(vault, kek, tee_key, enc):
    released = unwrap_released_key(release_jws(vault, kek, tee_key, enc=enc), tee_key, [vault[0].certificate], expected_key_id=KEK_ID)
    assert released.private_numbers() == kek.private_numbers()


def test_key_hsm_layout(tee_key):
    blob = json.loads(base64.urlsafe_b64decode(wrap_key_material(b"m" * 40, tee_key.public_key(), wrapping_kid="t") + "=="))
    assert blob["header"] == {"alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP", "kid": "t"}
    ciphertext = base64.urlsafe_b64decode(blob["ciphertext"] + "==")
    assert len(ciphertext) == 384 + 48  # RSA-3072 block + RFC 5649 wrap of 40 bytes (padded to 48, plus 8)


def test_another_tee_cannot_unwrap(vault, kek, tee_key):
    with pytest.raises(ReleasedKeyRejected, match="not wrapped to this TEE"):
        unwrap_released_key(release_jws(vault, kek, tee_key), rsa.generate_private_key(65537, 3072), [vault[0].certificate], expected_key_id=KEK_ID)


def test_untrusted_signer(vault, kek, tee_key, tmp_path):
    other = LocalCA.load_or_create(tmp_path / "other")
    with pytest.raises(ReleasedKeyRejected, match="chaining to a trusted vault root"):
        unwrap_released_key(release_jws(vault, kek, tee_key), tee_key, [other.certificate], expected_key_id=KEK_ID)
    with pytest.raises(ReleasedKeyRejected, match="no trusted vault root"):
        unwrap_released_key(release_jws(vault, kek, tee_key), tee_key, [], expected_key_id=KEK_ID)


def test_signature_by_another_key_than_the_certificate(vault, kek, tee_key):
    from cryptography.hazmat.primitives.asymmetric import ec

    forged = release_jws(vault, kek, tee_key, key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ReleasedKeyRejected, match="signature does not verify"):
        unwrap_released_key(forged, tee_key, [vault[0].certificate], expected_key_id=KEK_ID)


def test_a_self_signed_x5c_is_not_trusted(vault, kek, tee_key):
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "evil")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))  # fmt: skip
    chain = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    token = jwt.encode({"response": {}}, key, algorithm="RS256", headers={"x5c": chain})
    with pytest.raises(ReleasedKeyRejected, match="trusted vault root"):
        unwrap_released_key(token, tee_key, [vault[0].certificate], expected_key_id=KEK_ID)


def test_wrong_key_id_and_mismatched_public_key(vault, kek, tee_key):
    with pytest.raises(ReleasedKeyRejected, match="not the key asked for"):
        unwrap_released_key(release_jws(vault, kek, tee_key), tee_key, [vault[0].certificate], expected_key_id=KEK_ID + "x")
    other = rsa.generate_private_key(65537, 2048)
    with pytest.raises(ReleasedKeyRejected, match="does not match the public key"):
        unwrap_released_key(release_jws(vault, kek, tee_key, named=other), tee_key, [vault[0].certificate], expected_key_id=KEK_ID)


def test_tampered_key_hsm(tee_key):
    blob = json.loads(base64.urlsafe_b64decode(wrap_key_material(b"m" * 40, tee_key.public_key(), wrapping_kid="t") + "=="))
    raw = bytearray(base64.urlsafe_b64decode(blob["ciphertext"] + "=="))
    raw[-1] ^= 1
    blob["ciphertext"] = base64.urlsafe_b64encode(bytes(raw)).decode()
    with pytest.raises(ReleasedKeyRejected, match="integrity"):
        unwrap_key_hsm(base64.urlsafe_b64encode(json.dumps(blob).encode()).decode(), tee_key)
    blob["header"]["enc"] = "AES-GCM"
    with pytest.raises(ReleasedKeyRejected, match="not one of"):
        unwrap_key_hsm(base64.urlsafe_b64encode(json.dumps(blob).encode()).decode(), tee_key)
    with pytest.raises(ReleasedKeyRejected, match="JSON"):
        unwrap_key_hsm("bm90IGpzb24", tee_key)


def test_not_a_jws(tee_key, vault):
    with pytest.raises(ReleasedKeyRejected, match="not a JWS"):
        unwrap_released_key("garbage", tee_key, [vault[0].certificate], expected_key_id=KEK_ID)


def test_the_released_version_says_when_it_was_created(vault, kek, tee_key):
    released = open_release_response(release_jws(vault, kek, tee_key), tee_key, [vault[0].certificate], expected_key_id=KEK_ID)
    assert (released.kid, released.created) == (KEK_ID, 1_700_000_000)
    assert "PRIVATE" not in repr(released) and str(kek.private_numbers().d) not in repr(released)


def test_only_a_server_certificate_for_the_vaults_own_host_signs_a_release(vault, kek, tee_key, tmp_path):
    ca = vault[0]
    # The same CA's client certificate (the kind the pipeline holds for the trainer's API) signs nothing.
    client = ca.issue_client_certificate(tmp_path / "client", "pipeline")
    with pytest.raises(ReleasedKeyRejected, match="not a TLS server certificate for the vault's host vault.example"):
        unwrap_released_key(release_jws(vault, kek, tee_key, signer=(ca, client.cert_path, client.key_path)), tee_key,
                            [ca.certificate], expected_key_id=KEK_ID)  # fmt: skip
    # Nor does a server certificate of the same CA for another host (another service of the deployment).
    other = ca.issue_server_certificate(tmp_path / "server", "attestation", ("attestation.example",))
    with pytest.raises(ReleasedKeyRejected, match="vault.example"):
        unwrap_released_key(release_jws(vault, kek, tee_key, signer=(ca, other.cert_path, other.key_path)), tee_key,
                            [ca.certificate], expected_key_id=KEK_ID)  # fmt: skip
    # Asked of a vault on another host, the vault's own certificate does not vouch either.
    elsewhere = "https://other-vault.example/keys/kek/0123456789abcdef0123456789abcdef"
    with pytest.raises(ReleasedKeyRejected, match="other-vault.example"):
        unwrap_released_key(release_jws(vault, kek, tee_key, kid=elsewhere), tee_key, [ca.certificate], expected_key_id=elsewhere)


def _der(tag: int, body: bytes) -> bytes:
    length = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag]) + (bytes([len(body)]) if len(body) < 128 else bytes([0x80 | len(length)]) + length) + body


def _pkcs8(numbers: rsa.RSAPrivateNumbers) -> bytes:
    """PKCS#8 DER of ``numbers`` written field by field: pyca refuses to build some of the faulty keys below."""
    fields = (0, numbers.public_numbers.n, numbers.public_numbers.e, numbers.d, numbers.p, numbers.q, numbers.dmp1,
              numbers.dmq1, numbers.iqmp)  # fmt: skip
    rsa_key = _der(0x30, b"".join(_der(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big")) for v in fields))
    rsa_encryption = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    return _der(0x30, _der(0x02, b"\x00") + rsa_encryption + _der(0x04, rsa_key))


def test_a_signed_release_of_an_inconsistent_key_is_refused(vault, kek, tee_key):
    # The released key is loaded without OpenSSL's full validation (its origin is the vault's signature); what a
    # faulty key could get wrong is checked directly, each check naming itself.
    good = kek.private_numbers()
    public = good.public_numbers
    assert serialization.load_der_private_key(_pkcs8(good), None).private_numbers() == good

    def released(numbers: rsa.RSAPrivateNumbers):
        return unwrap_released_key(
            release_jws(vault, kek, tee_key, material=_pkcs8(numbers)), tee_key, [vault[0].certificate],
            expected_key_id=KEK_ID,
        )  # fmt: skip

    # Private exponents that do not invert e (every one OpenSSL could fall back on): the probe does not open.
    wrong_exponents = rsa.RSAPrivateNumbers(
        good.p, good.q, good.d + 2, good.dmp1 + 2, good.dmq1 + 2, good.iqmp, public
    )
    with pytest.raises(ReleasedKeyRejected, match="does not decrypt what its public half encrypts"):
        released(wrong_exponents)
    # Primes that are not the modulus's factors.
    other = rsa.generate_private_key(65537, 2048).private_numbers()
    wrong_primes = rsa.RSAPrivateNumbers(other.p, other.q, good.d, good.dmp1, good.dmq1, good.iqmp, public)
    with pytest.raises(ReleasedKeyRejected, match="primes do not factor its modulus"):
        released(wrong_primes)
    trivial = rsa.RSAPrivateNumbers(1, public.n, good.d, good.dmp1, good.dmq1, good.iqmp, public)
    with pytest.raises(ReleasedKeyRejected, match="primes do not factor its modulus"):
        released(trivial)


def test_a_released_key_of_a_size_the_vault_does_not_make_is_refused(vault, tee_key):
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(ReleasedKeyRejected, match="1024 bits; Key Vault makes 2048 to 4096"):
        unwrap_released_key(release_jws(vault, small, tee_key), tee_key, [vault[0].certificate], expected_key_id=KEK_ID)
