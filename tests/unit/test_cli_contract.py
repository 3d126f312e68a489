"""``securetrain contract propose | sign | verify | show | revoke``: the lifecycle on files, and its exit codes."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securetrain.core.cli import COMMAND_GROUP_ENTRY_POINTS, main
from securetrain.core.governance.signatures import SignedContract
from tests.contract_parties import PARTIES, TERMS_FILE, WORKLOAD, consumer_public_pem


@pytest.fixture(autouse=True)
def contract_command(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``contract`` group, found through its entry point: the installed one, or (in a checkout not
    reinstalled since the group was added) the one a distribution's metadata on the path declares."""
    if any(ep.name == "contract" for ep in importlib.metadata.entry_points(group=COMMAND_GROUP_ENTRY_POINTS)):
        return
    info = tmp_path_factory.mktemp("meta") / "securetrain_contract_cli-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: securetrain-contract-cli\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[{COMMAND_GROUP_ENTRY_POINTS}]\ncontract = securetrain.core.cli.contract\n")
    monkeypatch.syspath_prepend(str(info.parent))


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Each party's private key file, its public key beside it (``<party>.pub.pem``)."""
    files = {}
    for party in PARTIES:
        key = Ed25519PrivateKey.generate()
        files[party] = tmp_path / f"{party}.pem"
        files[party].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))  # fmt: skip
        files[party].with_suffix(".pub.pem").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return files


@pytest.fixture
def proposed(tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> Path:
    (tmp_path / "lab-rsa.pem").write_text(consumer_public_pem())
    (tmp_path / "workload.json").write_text(WORKLOAD.model_dump_json())
    out = tmp_path / "contract.json"
    args = ["contract", "propose", "--terms", str(TERMS_FILE), "--recipient-key", f"research-lab={tmp_path / 'lab-rsa.pem'}",
            "--workload", str(tmp_path / "workload.json"), "--valid-for", "30", "--out", str(out)]
    for party, key in keys.items():
        args += ["--party-key", f"{party}={key.with_suffix('.pub.pem')}"]
    for dataset, letter in (("breast-cancer-a", "a"), ("breast-cancer-b", "b")):
        args += ["--dataset-version", f"{dataset}=v1:{letter * 64}",
                 "--kek", f"{dataset}=https://vault.securetrain.test/keys/kek-{dataset}"]  # fmt: skip
    assert main(args) == 0
    digest = capsys.readouterr().out.strip()
    assert SignedContract.from_bytes(out.read_bytes()).contract.digest() == digest
    return out


def _sign_all(contract: Path, keys: dict[str, Path], parties: tuple[str, ...] = PARTIES) -> None:
    for party in parties:
        assert main(["contract", "sign", str(contract), "--party", party, "--key", str(keys[party])]) == 0


def test_propose_sign_verify_show(proposed: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _sign_all(proposed, keys)
    capsys.readouterr()
    assert main(["contract", "verify", str(proposed)]) == 0
    assert "is in force: signed by hospital-a, hospital-b, research-lab" in capsys.readouterr().out
    assert main(["contract", "show", str(proposed)]) == 0
    shown = capsys.readouterr().out
    assert "hospital-b               data-owner" in shown and shown.count("  signed") == 3
    assert "DP-SGD required: ε ≤ 3 per run, 8 in all" in shown


def test_verify_names_a_missing_signature(proposed: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _sign_all(proposed, keys, ("hospital-a", "research-lab"))
    capsys.readouterr()
    assert main(["contract", "verify", str(proposed)]) == 3
    assert "party 'hospital-b' has not signed the contract" in capsys.readouterr().err
    assert main(["contract", "show", str(proposed)]) == 0
    assert "not signed" in capsys.readouterr().out


def test_verify_names_a_signature_broken_by_an_edit(proposed: Path, keys: dict[str, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _sign_all(proposed, keys)
    proposed.write_bytes(proposed.read_bytes().replace(b'"export_allowed": false', b'"export_allowed": true'))
    capsys.readouterr()
    assert main(["contract", "verify", str(proposed)]) == 3
    assert "the signature of party 'hospital-a' is refused" in capsys.readouterr().err


def test_a_key_that_is_not_the_partys_cannot_sign(proposed: Path, keys: dict[str, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["contract", "sign", str(proposed), "--party", "hospital-a", "--key", str(keys["hospital-b"])]) == 2
    assert "not party 'hospital-a''s signing key" in capsys.readouterr().err


def test_revoke_then_verify_refuses(proposed: Path, keys: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _sign_all(proposed, keys)
    revocation = tmp_path / "b.jws"
    assert main(["contract", "revoke", str(proposed), "--party", "hospital-b", "--key", str(keys["hospital-b"]),
                 "--reason", "consent withdrawn", "--out", str(revocation)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["contract", "verify", str(proposed), "--revocation", str(revocation)]) == 3
    assert "party 'hospital-b' revoked the contract" in capsys.readouterr().err
    revocation.write_text("garbage")
    assert main(["contract", "verify", str(proposed), "--revocation", str(revocation)]) == 3
    assert f"the revocation {revocation} cannot be verified" in capsys.readouterr().err


def test_verify_at_a_time_outside_the_validity(proposed: Path, keys: dict[str, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _sign_all(proposed, keys)
    capsys.readouterr()
    assert main(["contract", "verify", str(proposed), "--at", "2020-01-01T00:00:00Z"]) == 3
    assert "validity.not_before" in capsys.readouterr().err
    assert main(["contract", "verify", str(proposed), "--at", "2999-01-01T00:00:00Z"]) == 3
    assert "validity.expires" in capsys.readouterr().err


def test_a_bad_file_or_argument_exits_2(tmp_path: Path, proposed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"contract": {}, "signatures": []}))
    assert main(["contract", "verify", str(broken)]) == 2
    assert "contract field 'contract.contract_id': required field is missing" in capsys.readouterr().err
    assert main(["contract", "verify", str(tmp_path / "absent.json")]) == 2
    assert main(["contract", "propose", "--terms", str(TERMS_FILE), "--kek", "breast-cancer-a", "--out",
                 str(tmp_path / "x.json")]) == 2  # fmt: skip
    assert "give NAME=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["contract", "verify", str(proposed), "--at", "yesterday"])
    assert caught.value.code == 2
