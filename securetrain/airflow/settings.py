"""The pipeline's own settings in Airflow: its signing keys, the approved policy, the access review's inputs.

Endpoints and identities are Airflow connections (the hooks read them); the rest is read here, once per use,
from the Airflow processes' ``SECURETRAIN_*`` variables (docs/airflow.md, "What the environment sets").
"""

from __future__ import annotations

from pathlib import Path

from pydantic import FilePath

from securetrain.core.settings import Settings


class PipelineSettings(Settings):
    audit_signing_key: Path | None = None
    model_signing_key: Path | None = None
    release_policy: FilePath | None = None
    keyvault_roles: FilePath | None = None
    keyvault_access_log: Path | None = None
    attestation_log: Path | None = None
