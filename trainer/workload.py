"""The workload manifest: what the TEE runs, reduced to one digest that goes into HOST_DATA.

The manifest lists every file of the installed trainer package with its SHA-256, and the trainer's
fixed configuration. Its digest, ``SHA-256(canonical JSON of the manifest)``, is the HOST_DATA the
confidential VM is launched with (as Azure confidential containers bind their policy), so the hardware
report names the exact trainer code, and a release policy that pins it refuses the key to a trainer in
which one byte changed. ``securetrain cvm measure`` prints it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import rfc8785

import trainer

MANIFEST_VERSION = 1
# Configuration the trainer is launched with that the data owner approves together with the code.
FIXED_CONFIGURATION: dict[str, Any] = {
    "plaintext_to_disk": False,
    "pickle": False,
    "sealed_outputs": True,
}


def manifest(root: Path | None = None) -> dict[str, Any]:
    """The manifest of the trainer package at ``root`` (the installed one by default)."""
    root = root or Path(trainer.__file__).resolve().parent
    files = {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    return {"version": MANIFEST_VERSION, "package": "trainer", "files": files, "configuration": FIXED_CONFIGURATION}


def host_data(root: Path | None = None) -> bytes:
    """HOST_DATA for the trainer at ``root``: the 32-byte SHA-256 of its canonical manifest."""
    return hashlib.sha256(rfc8785.dumps(manifest(root))).digest()
