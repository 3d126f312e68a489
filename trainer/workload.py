"""The workload manifest: everything the TEE runs beyond the platform image, reduced to one digest.

The manifest lists

- every file of the trainer package and of the core library it imports (``securetrain``), each with
  its SHA-256, so that a changed line anywhere on the TEE's code path — the sealed-format decryption,
  the verifiers, the agent — changes the measurement;
- every installed distribution (name, version and the SHA-256 of its ``RECORD``, the wheel's own list of
  file hashes), so that another torch, pandas or cryptography changes it too;
- the Python implementation and version;
- the TEE's fixed configuration, including the data owner keys it trusts (:mod:`trainer.data_owners`):
  a TEE started with another owner's key is another workload.

Its digest, ``SHA-256(canonical JSON of the manifest)``, is the HOST_DATA the confidential VM is launched
with (as Azure confidential containers bind their policy), so the hardware report names the exact code
and dependency set, and a release policy that pins it refuses the key to a TEE in which one byte changed.
``securetrain cvm measure`` prints it.

The project's own distribution is measured by its source files, not its metadata: an editable install's
``RECORD`` lists a path file, not the code.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rfc8785

import securetrain
import trainer

MANIFEST_VERSION = 2
#: The packages whose source the TEE runs, measured file by file.
MEASURED_PACKAGES = (trainer, securetrain)
_PROJECT_DISTRIBUTION = "securetrain"
# Configuration the trainer is launched with that the data owner approves together with the code.
FIXED_CONFIGURATION: dict[str, Any] = {
    "plaintext_to_disk": False,
    "pickle": False,
    "sealed_outputs": True,
}


def package_files(root: Path) -> dict[str, str]:
    """SHA-256 of every file under the package directory ``root`` (compiled caches left out)."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def installed_distributions() -> dict[str, dict[str, str]]:
    """Every installed distribution but the project's own: version and SHA-256 of its RECORD."""
    distributions: dict[str, dict[str, str]] = {}
    for distribution in importlib.metadata.distributions():
        name = (distribution.metadata["Name"] or "").lower().replace("_", "-")
        if not name or name == _PROJECT_DISTRIBUTION or name in distributions:
            # The first one on sys.path is the one imported; a shadowed copy is never loaded.
            continue
        record = distribution.read_text("RECORD") or ""
        distributions[name] = {"version": distribution.version, "record_sha256": hashlib.sha256(record.encode()).hexdigest()}
    return dict(sorted(distributions.items()))


def manifest(data_owner_key_ids: Sequence[str] = (), roots: dict[str, Path] | None = None) -> dict[str, Any]:
    """The manifest of the installed workload trusting ``data_owner_key_ids``.

    ``roots`` replaces a measured package's directory by name (``{"trainer": DIR}``), to measure a copy.
    """
    directories = {package.__name__: Path(package.__file__).resolve().parent for package in MEASURED_PACKAGES}
    directories.update(roots or {})
    return {
        "version": MANIFEST_VERSION,
        "packages": {name: package_files(directory) for name, directory in sorted(directories.items())},
        "distributions": installed_distributions(),
        "python": {"implementation": platform.python_implementation(), "version": platform.python_version()},
        "configuration": {**FIXED_CONFIGURATION, "data_owner_keys": sorted(data_owner_key_ids)},
    }


def host_data(data_owner_key_ids: Sequence[str] = (), roots: dict[str, Path] | None = None) -> bytes:
    """HOST_DATA of the workload: the 32-byte SHA-256 of its canonical manifest."""
    return hashlib.sha256(rfc8785.dumps(manifest(data_owner_key_ids, roots))).digest()
