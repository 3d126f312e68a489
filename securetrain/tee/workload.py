"""The workload manifest: everything the TEE runs beyond the platform image, reduced to one digest.

Its digest, ``SHA-256(canonical JSON of the manifest)``, is the HOST_DATA the confidential VM is launched with
(as Azure confidential containers bind their policy), so the hardware report names the exact code and
dependency set, and a release policy that pins it refuses the key to a TEE in which one byte changed. What it
lists (the TEE and core zones file by file, every installed distribution's ``RECORD``, the Python version, the
fixed configuration with the data owner keys the TEE trusts and the GPU it requires) and what it does not cover are in
docs/trainer.md ("What is measured"). The Airflow and local-stack zones never run in the TEE and are not measured.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import rfc8785

import securetrain
from securetrain.tee.gpu_attestation import NO_GPU

MANIFEST_VERSION = 4
#: The zones of the ``securetrain`` package whose source the TEE runs, measured file by file.
MEASURED_ZONES = ("core", "tee")
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


def installed_source() -> Path:
    """The directory of the ``securetrain`` package this process imported."""
    return Path(securetrain.__file__).resolve().parent


def source_files(source: Path) -> dict[str, dict[str, str]]:
    """SHA-256 of the TEE's code in the ``securetrain`` package directory ``source``, by zone."""
    init = source / "__init__.py"
    files = {"securetrain": {init.name: hashlib.sha256(init.read_bytes()).hexdigest()}}
    files.update({f"securetrain.{zone}": package_files(source / zone) for zone in MEASURED_ZONES})
    return files


def manifest(
    data_owner_key_ids: Sequence[str] = (), source: Path | None = None, gpu: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest of the installed workload trusting ``data_owner_key_ids`` and requiring the ``gpu`` it is
    configured with (:meth:`securetrain.tee.settings.GpuSettings.gpu_configuration`; None: no GPU).

    ``source`` measures the ``securetrain`` package in another directory (a copy) instead of the installed one.
    """
    return {
        "version": MANIFEST_VERSION,
        "packages": source_files(source or installed_source()),
        "distributions": installed_distributions(),
        "python": {"implementation": platform.python_implementation(), "version": platform.python_version()},
        "configuration": {**FIXED_CONFIGURATION, "data_owner_keys": sorted(data_owner_key_ids),
                          "gpu": dict(gpu or NO_GPU)},
    }


def host_data(
    data_owner_key_ids: Sequence[str] = (), source: Path | None = None, gpu: Mapping[str, Any] | None = None
) -> bytes:
    """HOST_DATA of the workload: the 32-byte SHA-256 of its canonical manifest."""
    return hashlib.sha256(rfc8785.dumps(manifest(data_owner_key_ids, source, gpu))).digest()
