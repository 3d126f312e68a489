"""``stack.env``: the settings a client needs to reach the local stack, as shell ``export`` lines.

Written by ``securetrain stack up``; a shell loads it with ``source .securetrain/stack.env``, Python with
:func:`read_stack_env`. Each line is ``export NAME=VALUE`` with VALUE quoted for POSIX shells, so a value
may hold any character (the Airflow connection is JSON). The file holds account keys, so it is 0600.
"""

from __future__ import annotations

import datetime
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from securetrain.localstack.errors import StackConfigurationError
from securetrain.localstack.layout import write_file

_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class MalformedStackEnv(StackConfigurationError):
    """``stack.env`` has a line that is not ``export NAME=VALUE``."""


def format_stack_env(values: Mapping[str, str]) -> str:
    """The text of a ``stack.env`` file holding ``values`` (names sorted)."""
    lines = [
        f"# Written by `securetrain stack up` at {datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}.",
        "# Load into a shell with: source stack.env   (holds account keys: keep it private)",
    ]
    for name in sorted(values):
        if not _NAME.fullmatch(name):
            raise MalformedStackEnv(f"{name!r} is not a valid environment variable name for stack.env")
        lines.append(f"export {name}={shlex.quote(values[name])}")
    return "\n".join(lines) + "\n"


def write_stack_env(path: Path, values: Mapping[str, str]) -> None:
    """Write ``values`` to ``path`` as a ``stack.env`` file (atomically, mode 0600)."""
    write_file(path, format_stack_env(values).encode(), mode=0o600)


def parse_stack_env(text: str, *, source: str = "stack.env") -> dict[str, str]:
    """Parse the text of a ``stack.env`` file into a dict.

    Raises:
        MalformedStackEnv: a line is neither blank, a comment, nor ``export NAME=VALUE`` with one
            shell word as VALUE.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, separator, quoted = stripped.removeprefix("export ").partition("=")
        try:
            words = shlex.split(quoted, comments=False, posix=True)
        except ValueError as exc:
            raise MalformedStackEnv(f"{source} line {number}: the value cannot be parsed ({exc})") from exc
        if not stripped.startswith("export ") or not separator or not _NAME.fullmatch(name) or len(words) > 1:
            raise MalformedStackEnv(
                f"{source} line {number} is not `export NAME=VALUE`; run `securetrain stack up` to rewrite it"
            )
        values[name] = words[0] if words else ""
    return values


def read_stack_env(path: Path) -> dict[str, str]:
    """Read and parse the ``stack.env`` file at ``path``.

    Raises:
        StackConfigurationError: the file is missing (the stack was never brought up there) or malformed.
    """
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise StackConfigurationError(
            f"{path} does not exist: run `securetrain stack up` first (or point --state-dir / "
            "SECURETRAIN_STATE_DIR at the state directory of a running stack)"
        ) from exc
    return parse_stack_env(text, source=str(path))
