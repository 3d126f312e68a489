"""The stack launcher with real processes: Azurite from node_modules, `sleep` as a bystander."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from securetrain.core.cli import main
from securetrain.localstack import ServiceState, StackConfig, down, read_stack_env, status, up
from securetrain.localstack.envfile import MalformedStackEnv, format_stack_env, parse_stack_env
from securetrain.localstack.errors import PortInUse, StackConfigurationError
from securetrain.localstack.process import PidRecord, ProcessIdentity
from securetrain.localstack.registry import start_order
from securetrain.localstack.service import Service, ServiceContext
from tests.conftest import _config_with_free_ports

pytestmark = pytest.mark.integration


def running_pid(config: StackConfig, service: str = "azurite") -> int:
    record = PidRecord.read(config.layout.pid_file(service))
    assert record is not None and record.process.is_running()
    return record.process.pid


def only(config: StackConfig) -> ServiceState:
    [entry] = status(config)
    return entry.state


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process, in its own session like a service, that the stack must never touch."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_up_status_up_again_down(stack_config: StackConfig) -> None:
    assert only(stack_config) is ServiceState.STOPPED

    exported = up(stack_config)
    [entry] = status(stack_config)
    assert entry.state is ServiceState.HEALTHY
    port = stack_config.ports["azurite"]
    assert entry.url == f"https://127.0.0.1:{port}"
    pid = running_pid(stack_config)
    assert entry.pid == pid

    env = read_stack_env(stack_config.layout.env_file)
    assert env == exported
    assert stat.S_IMODE(stack_config.layout.env_file.stat().st_mode) == 0o600
    assert env["SECURETRAIN_BLOB_ENDPOINT"] == f"https://127.0.0.1:{port}/devstoreaccount1"
    assert env["SECURETRAIN_CA_BUNDLE"] == str(stack_config.layout.ca_bundle)
    assert "REQUESTS_CA_BUNDLE" not in env and "SSL_CERT_FILE" not in env
    connection = json.loads(env["AIRFLOW_CONN_SECURETRAIN_STORAGE"])
    assert connection["conn_type"] == "wasb"
    assert connection["host"] == env["SECURETRAIN_BLOB_ENDPOINT"]
    assert connection["password"] == env["SECURETRAIN_BLOB_ACCOUNT_KEY"]
    assert connection["extra"] == {"connection_verify": env["SECURETRAIN_CA_BUNDLE"]}
    # A generated account key, not the emulator's published one.
    assert not env["SECURETRAIN_BLOB_ACCOUNT_KEY"].startswith(
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4"
    )

    assert up(stack_config) == exported
    assert running_pid(stack_config) == pid  # nothing new started

    assert down(stack_config) == ["azurite"]
    assert ProcessIdentity.of(pid) is None
    assert not stack_config.layout.pid_file("azurite").exists()
    assert not stack_config.layout.env_file.exists()
    assert only(stack_config) is ServiceState.STOPPED
    assert down(stack_config) == []


def test_killed_service_is_reported_dead_and_restarted_by_up(
    stack_config: StackConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    up(stack_config)
    pid = running_pid(stack_config)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while ProcessIdentity.of(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)

    [entry] = status(stack_config)
    assert entry.state is ServiceState.DEAD
    assert entry.pid == pid
    assert "no process has that PID now" in entry.detail
    capsys.readouterr()
    assert main(["stack", "status", "--state-dir", str(stack_config.layout.root)]) == 1
    printed = capsys.readouterr().out
    assert "azurite      dead" in printed and str(stack_config.layout.log_file("azurite")) in printed

    up(stack_config)
    assert running_pid(stack_config) != pid
    assert only(stack_config) is ServiceState.HEALTHY


def test_down_stops_only_what_the_stack_started(stack_config: StackConfig, bystander: subprocess.Popen[bytes]) -> None:
    up(stack_config)
    pid = running_pid(stack_config)
    assert down(stack_config) == ["azurite"]
    assert ProcessIdentity.of(pid) is None
    assert bystander.poll() is None, "down must not touch a process it did not start"


def test_a_reused_pid_is_never_signalled(stack_config: StackConfig, bystander: subprocess.Popen[bytes]) -> None:
    # A PID file whose PID now belongs to another program (same PID, other start time), as after a reboot
    # or PID wrap-around.
    stack_config.layout.create()
    identity = ProcessIdentity.of(bystander.pid)
    assert identity is not None
    stale = replace(identity, start_ticks=identity.start_ticks - 1)
    PidRecord(stale, "127.0.0.1", stack_config.ports["azurite"], "stale", "then").write(
        stack_config.layout.pid_file("azurite")
    )

    [entry] = status(stack_config)
    assert entry.state is ServiceState.DEAD
    assert "belongs to another process" in entry.detail
    assert down(stack_config) == []
    assert bystander.poll() is None
    assert not stack_config.layout.pid_file("azurite").exists()


def test_up_restarts_a_service_asked_for_on_another_port(stack_config: StackConfig, tmp_path: Path) -> None:
    up(stack_config)
    old_pid = running_pid(stack_config)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        new_port = probe.getsockname()[1]
    moved = StackConfig.resolve(stack_config.layout.root, {"azurite": new_port}, stack_config.services)
    env = up(moved)
    assert env["SECURETRAIN_BLOB_ENDPOINT"] == f"https://127.0.0.1:{new_port}/devstoreaccount1"
    assert ProcessIdentity.of(old_pid) is None
    [entry] = status(moved)
    assert entry.state is ServiceState.HEALTHY and entry.url == f"https://127.0.0.1:{new_port}"


def test_port_taken_by_another_program_is_reported(stack_config: StackConfig) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack_config.ports["azurite"]))
        squatter.listen()
        with pytest.raises(PortInUse, match=f"port {stack_config.ports['azurite']} on 127.0.0.1 is in use"):
            up(stack_config)
    assert not stack_config.layout.pid_file("azurite").exists()
    assert not stack_config.layout.env_file.exists()


def test_command_line_up_status_down(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog) -> None:
    # The command line runs the whole registry; every service gets a free port.
    config = _config_with_free_ports(tmp_path / "state")
    state = ["--state-dir", str(config.layout.root)]
    ports = [option for name, port in config.ports.items() for option in ("--port", f"{name}={port}")]
    try:
        assert main(["stack", "up", *state, "--platform", config.platform.value, *ports]) == 0
        assert f"source {config.layout.env_file}" in capsys.readouterr().out
        assert main(["stack", "status", *state]) == 0
        printed = capsys.readouterr().out
        for name, port in config.ports.items():
            assert f"{name:<12} healthy pid {running_pid(config, name)} https://127.0.0.1:{port}" in printed
        assert main(["stack", "down", *state]) == 0
        stop_order = [service.name for service in reversed(start_order(config.services))]
        assert capsys.readouterr().out.strip() == f"stopped: {', '.join(stop_order)}"
        # Each stopped on SIGTERM: none waited for a connection that `up`'s own clients left open (the identity
        # service did, for the credentials that set the attestation policies and made the KEK, until SIGKILL).
        assert "sending SIGKILL" not in caplog.text
        assert main(["stack", "down", *state]) == 0
        assert capsys.readouterr().out.strip() == "nothing was running"
    finally:
        down(config)


def test_command_line_reports_a_bad_port_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["stack", "up", "--state-dir", str(tmp_path), "--port", "nosuch=10000"]) == 2
    assert "no stack service named nosuch" in capsys.readouterr().err


def test_ports_come_from_options_then_environment_then_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SECURETRAIN_AZURITE_PORT", raising=False)
    assert StackConfig.resolve(tmp_path).ports["azurite"] == 10000
    monkeypatch.setenv("SECURETRAIN_AZURITE_PORT", "12345")
    assert StackConfig.resolve(tmp_path).ports["azurite"] == 12345
    assert StackConfig.resolve(tmp_path, {"azurite": 23456}).ports["azurite"] == 23456
    monkeypatch.setenv("SECURETRAIN_AZURITE_PORT", "http")
    with pytest.raises(StackConfigurationError, match="SECURETRAIN_AZURITE_PORT is 'http'"):
        StackConfig.resolve(tmp_path)
    with pytest.raises(StackConfigurationError, match="from 1 to 65535"):
        StackConfig.resolve(tmp_path, {"azurite": 70000})


def test_state_dir_comes_from_option_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SECURETRAIN_STATE_DIR", str(tmp_path / "from-env"))
    assert StackConfig.resolve().layout.root == tmp_path / "from-env"
    assert StackConfig.resolve(tmp_path / "explicit").layout.root == tmp_path / "explicit"
    monkeypatch.delenv("SECURETRAIN_STATE_DIR")
    assert StackConfig.resolve().layout.root.name == ".securetrain"


def _declared(name: str, *depends_on: str) -> Service:
    def never_started(context: ServiceContext) -> list[str]:
        raise AssertionError(f"{context.name} must not be started by an ordering test")

    return Service(name, name, 1, argv=never_started, health_check=lambda context: None, depends_on=depends_on)


def test_services_start_after_their_dependencies() -> None:
    services = [
        _declared("trainer", "keyvault", "attestation"),
        _declared("keyvault", "attestation"),
        _declared("attestation"),
    ]
    assert [service.name for service in start_order(services)] == ["attestation", "keyvault", "trainer"]


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ([_declared("a", "b")], "depends on b, which is not declared"),
        ([_declared("a", "b"), _declared("b", "a")], "in a cycle"),
        ([_declared("a"), _declared("a")], "two stack services are named 'a'"),
    ],
)
def test_bad_service_registries_are_refused(services: list[Service], message: str) -> None:
    with pytest.raises(StackConfigurationError, match=message):
        start_order(services)


def test_stack_env_round_trips_through_a_real_shell(tmp_path: Path) -> None:
    values = {
        "PLAIN": "https://127.0.0.1:10000/devstoreaccount1",
        "JSON": json.dumps({"extra": {"path": "/tmp/it's here"}, "key": "a+b/c=="}),
        "SPACES_AND_DOLLARS": '  $HOME `id` "quoted" \\ ',
        "EMPTY": "",
    }
    path = tmp_path / "stack.env"
    path.write_text(format_stack_env(values))
    assert parse_stack_env(path.read_text()) == values
    for name, value in values.items():
        shell = subprocess.run(
            ["bash", "-c", f'source "$1" && printf %s "${name}"', "bash", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert shell.stdout == value


@pytest.mark.parametrize("line", ["PLAIN=1", "export lower=1", "export A=two words", "export A='unclosed"])
def test_malformed_stack_env_lines_are_refused(line: str) -> None:
    with pytest.raises(MalformedStackEnv, match="line 1"):
        parse_stack_env(line)
