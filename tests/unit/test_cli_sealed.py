"""``securetrain seal | unseal | inspect``: exit codes and messages a script can rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from securetrain.core.cli import main

KEK_ID = "https://vault.securetrain.test/keys/kek/1"


@pytest.fixture
def sealed_file(tmp_path, key_pems):
    public, _ = key_pems
    plain = tmp_path / "data.csv"
    plain.write_bytes(b"age,label\n" + b"42,1\n" * 5000)
    out = tmp_path / "data.csv.sealed"
    assert main(["seal", str(plain), str(out), "--kek-public-key", str(public), "--kek-id", KEK_ID,
                 "--context", "dataset_id=demo", "--segment-size", "4096"]) == 0
    return plain, out


def test_seal_inspect_unseal(tmp_path, key_pems, sealed_file, capsys):
    _, private = key_pems
    plain, sealed = sealed_file
    capsys.readouterr()
    assert main(["inspect", str(sealed)]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["context"] == {"dataset_id": "demo"}
    assert header["key"]["kek_id"] == KEK_ID
    assert header["plaintext_length"] == plain.stat().st_size
    back = tmp_path / "back.csv"
    assert main(["unseal", str(sealed), str(back), "--private-key", str(private),
                 "--expect-context", "dataset_id=demo", "--verify-digest"]) == 0
    assert back.read_bytes() == plain.read_bytes()


def flip(path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, extra_args, code, message",
    [
        (lambda p: flip(p, 10), [], 15, "segment 6 failed authentication"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), [], 17, "ends inside segment"),
        (lambda p: p.write_bytes(p.read_bytes() + b"x"), [], 18, "follow the final segment"),
        (lambda p: p.write_bytes(b"NOPE" + p.read_bytes()[4:]), [], 10, "not a securetrain sealed file"),
        (lambda p: None, ["--expect-context", "dataset_id=other"], 13, "expected 'other'"),
    ],
)
def test_unseal_failures_exit_with_their_code(tmp_path, key_pems, sealed_file, capsys, damage, extra_args, code, message):
    _, private = key_pems
    _, sealed = sealed_file
    damage(sealed)
    out = tmp_path / "out.csv"
    assert main(["unseal", str(sealed), str(out), "--private-key", str(private), *extra_args]) == code
    err = capsys.readouterr().err
    assert message in err and err.startswith("securetrain unseal: error:")
    assert not out.exists()


def test_wrong_key_exit_code(tmp_path, sealed_file, capsys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = tmp_path / "other.pem"
    other.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert main(["unseal", str(sealed_file[1]), str(tmp_path / "o"), "--private-key", str(other)]) == 12
    assert "was sealed for KEK https://vault.securetrain.test/keys/kek/1" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path, key_pems, capsys):
    public, _ = key_pems
    assert main(["seal", str(tmp_path / "missing"), str(tmp_path / "o"), "--kek-public-key", str(public),
                 "--kek-id", KEK_ID]) == 2
    assert "is not a file" in capsys.readouterr().err
    (tmp_path / "in").write_bytes(b"x")
    assert main(["seal", str(tmp_path / "in"), str(tmp_path / "o"), "--kek-public-key", str(public),
                 "--kek-id", KEK_ID, "--context", "novalue"]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


def test_installed_entry_point_has_help():
    script = Path(sys.executable).parent / "securetrain"
    result = subprocess.run([str(script), "unseal", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "exit codes" in result.stdout and "--private-key" in result.stdout
