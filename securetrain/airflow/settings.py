"""The pipeline's own settings in Airflow: its signing keys, the approved policy, the access review's inputs.

Endpoints and identities are Airflow connections (the hooks read them); what is not a connection is read here,
once per use, from ``SECURETRAIN_*`` variables of the Airflow processes (pydantic-settings):

- ``SECURETRAIN_AUDIT_SIGNING_KEY``, ``SECURETRAIN_MODEL_SIGNING_KEY``: the Ed25519 PEM files the pipeline
  signs audit checkpoints and model manifests with (made on first use, 0600; docs/audit.md, docs/models.md
  say where a deployment keeps them);
- ``SECURETRAIN_RELEASE_POLICY``: the approved release policy (JSON), when a DAG run names none;
- ``SECURETRAIN_KEYVAULT_ROLES``, ``SECURETRAIN_KEYVAULT_ACCESS_LOG``, ``SECURETRAIN_ATTESTATION_LOG``: the
  vault's role assignments and decision logs, as exported for the access review and the run's audit
  (docs/maintenance.md says how each is exported on Azure).
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
