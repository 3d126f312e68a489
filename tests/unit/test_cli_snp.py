"""``securetrain snp verify | report``: exit codes, JSON on success, the failed check on refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from securetrain.core.attestation.policy import maa_policy_hash
from securetrain.core.cli import main
from securetrain.core.snp.report import TcbVersion
from securetrain.localstack.services.attestation import sev_snp_policy

MILAN = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "amd-snp-milan"
MILAN_REPORT = bytes.fromhex(MILAN.joinpath("report.hex").read_text())
MILAN_MEASUREMENT = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
CHAIN = ["--vcek", str(MILAN / "vcek.der"), "--ask", str(MILAN / "ask.pem"), "--ark", str(MILAN / "ark.pem")]
MEASUREMENT = "ab" * 48
HOST_DATA = "cd" * 32

# These run the verifier at the current time: the Milan VCEK expires on 2030-04-03, after which an honest
# verifier refuses it (test_snp_verifier.py pins a date inside its validity instead).


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else captured.out, captured.err


def write_policy(path: Path, measurement: str = MILAN_MEASUREMENT, host_data: str = "00" * 32) -> Path:
    """An attestation policy approving ``measurement`` and ``host_data`` at Milan's TCB (the local stack's kind)."""
    path.write_text(sev_snp_policy({bytes.fromhex(measurement)}, {bytes.fromhex(host_data)}, TcbVersion(3, 0, 8, 115)))
    return path


def test_milan_report_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    code, claims, _ = run(capsys, "snp", "verify", "--report", str(MILAN / "report.hex"), *CHAIN)
    assert code == 0
    assert claims["report"]["measurement"] == MILAN_MEASUREMENT
    assert claims["report"]["policy"]["debug"] is False
    assert claims["root"]["name"] == "AMD ARK-Milan"
    assert claims["simulated"] is False
    assert claims["policy_hash"] is None


def test_hex_with_whitespace_and_raw_binary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = MILAN_REPORT.hex().upper()
    pairs = [text[i : i + 2] for i in range(0, len(text), 2)]
    wrapped = tmp_path / "report.hex"
    wrapped.write_text("\n".join(" ".join(pairs[i : i + 16]) for i in range(0, len(pairs), 16)) + "\n\n")
    raw = tmp_path / "report.bin"
    raw.write_bytes(MILAN_REPORT)
    for path in (wrapped, raw):
        assert run(capsys, "snp", "verify", "--report", str(path), *CHAIN)[0] == 0


def test_tampered_report_exits_3_naming_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tampered = tmp_path / "report.bin"
    tampered.write_bytes(MILAN_REPORT[:0x90] + b"\x00" + MILAN_REPORT[0x91:])
    code, _, err = run(capsys, "snp", "verify", "--report", str(tampered), *CHAIN)
    assert code == 3
    assert "securetrain snp: error: report signature does not verify with the VCEK public key" in err


def test_truncated_report_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truncated = tmp_path / "report.bin"
    truncated.write_bytes(MILAN_REPORT[:1000])
    code, _, err = run(capsys, "snp", "verify", "--report", str(truncated), *CHAIN)
    assert code == 3
    assert "report is truncated: 1000 bytes" in err


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("report.hex", b"zz", "is named .hex but is not hex digits"),
        ("absent.bin", None, "cannot read report"),
    ],
)
def test_unreadable_report_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, _, err = run(capsys, "snp", "verify", "--report", str(path), *CHAIN)
    assert code == 2
    assert message in err


def test_policy_is_applied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_policy(tmp_path / "good.txt")
    code, claims, _ = run(capsys, "snp", "verify", "--report", str(MILAN / "report.hex"), *CHAIN, "--policy", str(good))
    assert code == 0 and claims["policy_hash"] == maa_policy_hash(good.read_text()) and claims["issued"] == {}
    other = write_policy(tmp_path / "other.txt", measurement="00" * 48)
    code, _, err = run(capsys, "snp", "verify", "--report", str(MILAN / "report.hex"), *CHAIN, "--policy", str(other))
    assert code == 3
    assert f'x-ms-sevsnpvm-launchmeasurement is "{MILAN_MEASUREMENT}"' in err


def test_invalid_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text(write_policy(tmp_path / "good.txt").read_text().replace("=> permit();", "=> permit(please);"))
    code, _, err = run(capsys, "snp", "verify", "--report", str(MILAN / "report.hex"), *CHAIN, "--policy", str(bad))
    assert code == 2
    assert "Expected ')'" in err


def simulated_report(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / "evidence"
    code, summary, _ = run(
        capsys,
        "snp",
        "report",
        "--state-dir",
        str(tmp_path / "platform"),
        "--out",
        str(out),
        "--measurement",
        MEASUREMENT,
        "--host-data",
        HOST_DATA,
        *extra,
    )
    assert code == 0
    return out, summary


def verify_simulated(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[int, Any, str]:
    chain = ["--vcek", str(out / "vcek.pem"), "--ask", str(out / "ask.pem"), "--ark", str(out / "ark.pem")]
    return run(capsys, "snp", "verify", "--report", str(out / "report.bin"), *chain, *extra)


def test_simulated_report_needs_a_policy_that_trusts_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, summary = simulated_report(tmp_path, capsys)
    assert summary["root"]["simulated"] is True
    code, _, err = verify_simulated(capsys, out)
    assert code == 3
    assert "is not a trusted root; trusted: AMD ARK-Milan, AMD ARK-Genoa" in err

    # Trusting its root is the verifier's configuration, never a policy's.
    trusted = ["--trust-root", str(out / "ark.pem")]
    policy = write_policy(tmp_path / "local.txt", measurement=MEASUREMENT, host_data=HOST_DATA)
    code, claims, _ = verify_simulated(capsys, out, *trusted, "--policy", str(policy))
    assert code == 0
    assert claims["simulated"] is True
    assert claims["report"]["measurement"] == MEASUREMENT

    # A debuggable VM from the same platform is refused by that policy.
    out, _ = simulated_report(tmp_path, capsys, "--debug")
    code, _, err = verify_simulated(capsys, out, *trusted, "--policy", str(policy))
    assert code == 3
    assert '[type=="x-ms-sevsnpvm-is-debuggable", value==false] is not satisfied (x-ms-sevsnpvm-is-debuggable is true)' in err


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--measurement", "ab"], "must be 48 bytes (96 hex digits), got 1"),
        (["--host-data", "xyz"], "'xyz' is not hex"),
        (["--tcb", "1,2,3"], "'1,2,3' is not BOOTLOADER,TEE,SNP,MICROCODE"),
        (["--tcb", "1,2,3,256"], "'1,2,3,256' is not BOOTLOADER,TEE,SNP,MICROCODE with each 0-255"),
        (["--vmpl", "4"], "invalid choice: 4"),
    ],
)
def test_report_options_are_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["snp", "report", "--out", str(tmp_path), "--measurement", MEASUREMENT, "--host-data", HOST_DATA, *bad])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report.bin").exists()
