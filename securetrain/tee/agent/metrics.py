"""``GET /metrics``: the agent's metrics in the Prometheus text exposition format, via prometheus-client.

The counters are in a registry of the runner's own; the rest is read from the runner at scrape time by a
collector, so nothing has to be kept in sync (docs/trainer.md, "The agent API").
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from securetrain.core.contracts.jobs import JobState

if TYPE_CHECKING:
    from securetrain.tee.agent.jobs import JobRunner

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The counters count since the agent started: a ``_created`` series beside each would only repeat its start
# time, and would add series to the output monitors read.
disable_created_metrics()


class RunnerMetrics:
    """The agent's counters since it started; increment them from any thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_finished = Counter(
            "securetrain_agent_jobs_finished", "Jobs that ended since the agent started.", ["state"], registry=self.registry
        )
        for state in sorted(JobState.terminal()):
            self.jobs_finished.labels(state.value)  # every end state is reported, 0 until a job ends in it
        self.epochs_completed = Counter(
            "securetrain_agent_epochs_completed", "Epochs completed (checkpoint sealed).", registry=self.registry
        )
        self.attestations = Counter("securetrain_agent_attestations", "Tokens obtained and validated.", registry=self.registry)
        self.attestation_failures = Counter(
            "securetrain_agent_attestation_failures", "Attestations that failed.", registry=self.registry
        )
        self.key_releases = Counter("securetrain_agent_key_releases", "KEKs released to this TEE.", registry=self.registry)


class _RunnerCollector(Collector):
    """The metrics of one agent: its counters, and its jobs and attestation read from its runner when scraped."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner

    def collect(self) -> Iterator[Metric]:
        runner = self._runner
        jobs = runner.jobs()
        info = GaugeMetricFamily("securetrain_agent_info", "The agent and the TEE it runs in.", labels=["tee_type"])
        info.add_metric([runner.tee_type], 1)
        yield info
        by_state = Tally(job.state for job in jobs)
        states = GaugeMetricFamily("securetrain_agent_jobs", "Jobs known to the agent, by state.", labels=["state"])
        for state in JobState:
            states.add_metric([state.value], by_state.get(state, 0))
        yield states
        yield from runner.metrics.registry.collect()
        running = [job for job in jobs if not job.state.finished and job.state is not JobState.QUEUED]
        epoch = GaugeMetricFamily("securetrain_agent_job_epoch", "Last completed epoch of the running job.", labels=["run_id"])
        step = GaugeMetricFamily(
            "securetrain_agent_job_step", "Global step of the running job at its last epoch.", labels=["run_id"]
        )
        for job in running:
            epoch.add_metric([job.run_id], job.epoch)
            step.add_metric([job.run_id], job.step)
        yield epoch
        yield step
        latest = runner.latest_attestation
        if latest is not None:
            now = time.time()
            yield GaugeMetricFamily(
                "securetrain_agent_attestation_age_seconds", "Seconds since the latest attestation.",
                value=round(now - latest.attested_at, 3),
            )  # fmt: skip
            yield GaugeMetricFamily(
                "securetrain_agent_attestation_expires_in_seconds", "Seconds until the latest token expires.",
                value=round(latest.token.expires_at - now, 3),
            )  # fmt: skip
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the agent process.", value=psutil.Process().memory_info().rss
        )


def render(runner: JobRunner) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RunnerCollector(runner))
    return generate_latest(registry).decode()
