"""``GET /metrics``: the agent's counters in the Prometheus text exposition format (version 0.0.4).

Written by hand: a dozen lines of a stable text format do not justify a dependency inside the TEE.
"""

from __future__ import annotations

import time
from collections import Counter

import psutil

from trainer.agent.jobs import JobRunner, JobState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            rendered = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
            self.lines.append(f"{name}{{{rendered}}} {value}" if rendered else f"{name} {value}")


def render(runner: JobRunner) -> str:
    """The exposition text for the agent behind ``runner``."""
    out = _Exposition()
    jobs = runner.jobs()
    by_state = Counter(job.state for job in jobs)
    counters = runner.metrics
    out.metric(
        "securetrain_agent_info", "gauge", "The agent and the TEE it runs in.", [({"tee_type": runner.tee_type}, 1)]
    )
    out.metric(
        "securetrain_agent_jobs",
        "gauge",
        "Jobs known to the agent, by state.",
        [({"state": state.value}, by_state.get(state, 0)) for state in JobState],
    )
    out.metric(
        "securetrain_agent_jobs_finished_total",
        "counter",
        "Jobs that ended since the agent started.",
        [({"state": state}, count) for state, count in counters.jobs_finished.items()],
    )
    out.metric(
        "securetrain_agent_epochs_completed_total",
        "counter",
        "Epochs completed (checkpoint sealed).",
        [({}, counters.epochs_completed)],
    )
    out.metric(
        "securetrain_agent_attestations_total",
        "counter",
        "Tokens obtained and validated.",
        [({}, counters.attestations)],
    )
    out.metric(
        "securetrain_agent_attestation_failures_total",
        "counter",
        "Attestations that failed.",
        [({}, counters.attestation_failures)],
    )
    out.metric(
        "securetrain_agent_key_releases_total", "counter", "KEKs released to this TEE.", [({}, counters.key_releases)]
    )
    running = [job for job in jobs if not job.state.finished and job.state is not JobState.QUEUED]
    out.metric(
        "securetrain_agent_job_epoch",
        "gauge",
        "Last completed epoch of the running job.",
        [({"run_id": job.run_id}, job.epoch) for job in running],
    )
    out.metric(
        "securetrain_agent_job_step",
        "gauge",
        "Global step of the running job at its last epoch.",
        [({"run_id": job.run_id}, job.step) for job in running],
    )
    latest = runner.latest_attestation
    if latest is not None:
        now = time.time()
        out.metric(
            "securetrain_agent_attestation_age_seconds",
            "gauge",
            "Seconds since the latest attestation.",
            [({}, round(now - latest.attested_at, 3))],
        )
        out.metric(
            "securetrain_agent_attestation_expires_in_seconds",
            "gauge",
            "Seconds until the latest token expires.",
            [({}, round(latest.token.expires_at - now, 3))],
        )
    out.metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the agent process.",
        [({}, psutil.Process().memory_info().rss)],
    )
    return "\n".join(out.lines) + "\n"
