"""The attestation policy in force for each attestation type: set through the API, kept across restarts.

``<state>/policies/<type>.jws`` holds the JWS a policy was set with, exactly as it arrived (``GET
/policies/{type}`` returns it, and its hash is what the client was told); no file means the type's
default policy (:data:`~.appraisal.DEFAULT_POLICY`). Every policy is parsed when it is set, and again when
the service starts: a file that no longer parses (edited by hand, written by another version) stops the
service instead of leaving it to appraise under a policy it does not understand.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from securetrain.core.errors import ConfigurationError
from securetrain.core.fsutil import atomic_output
from securetrain.localstack.standins.attestation_service.policy_jws import PolicyJwsInvalid, policy_text, unsigned_policy_jws
from securetrain.localstack.standins.attestation_service.policy_language import AttestationPolicy, PolicyInvalid


@dataclass(frozen=True)
class StoredPolicy:
    """A policy in force: the JWS it was set with (or the default's) and the policy parsed from it."""

    jws: str
    policy: AttestationPolicy
    default: bool


class PolicyStore:
    """The policies of ``attestation_types`` under ``directory``; ``default_policy`` until one is set."""

    def __init__(self, directory: Path, attestation_types: Iterable[str], default_policy: str) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._default = StoredPolicy(unsigned_policy_jws(default_policy), AttestationPolicy.parse(default_policy), True)
        self._lock = threading.Lock()
        self._current = {name: self._load(name) for name in attestation_types}

    def _path(self, attestation_type: str) -> Path:
        return self._dir / f"{attestation_type}.jws"

    def _load(self, attestation_type: str) -> StoredPolicy:
        path = self._path(attestation_type)
        if not path.exists():
            return self._default
        jws = path.read_text(encoding="ascii")
        try:
            return StoredPolicy(jws, AttestationPolicy.parse(policy_text(jws)), False)
        except (PolicyJwsInvalid, PolicyInvalid) as exc:
            raise ConfigurationError(f"the stored {attestation_type} policy {path} is no longer valid: {exc}") from None

    def current(self, attestation_type: str) -> StoredPolicy:
        with self._lock:
            return self._current[attestation_type]

    def set(self, attestation_type: str, jws: str) -> StoredPolicy:
        """Make the policy ``jws`` carries the one in force; :class:`PolicyJwsInvalid` or :class:`PolicyInvalid`
        (and nothing changes) if it is not one this service evaluates."""
        stored = StoredPolicy(jws, AttestationPolicy.parse(policy_text(jws)), False)
        with self._lock:
            with atomic_output(self._path(attestation_type), mode=0o600) as out:
                out.write(jws.encode("ascii"))
            self._current[attestation_type] = stored
        return stored

    def reset(self, attestation_type: str) -> StoredPolicy:
        """Put the default policy back in force."""
        with self._lock:
            self._path(attestation_type).unlink(missing_ok=True)
            self._current[attestation_type] = self._default
        return self._default
