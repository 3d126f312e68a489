"""``GET /metrics``: the agent's counters in the Prometheus text exposition format, via prometheus-client.

A custom collector reads the job runner's state at scrape time (nothing to keep in sync between the
runner and a set of metric objects), and ``generate_latest`` writes the format, escaping included.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from securetrain.tee.agent.jobs import JobRunner, JobState

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _RunnerCollector(Collector):
    """The metrics of one agent, read from its runner when scraped."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner

    def collect(self) -> Iterator[Metric]:
        runner = self._runner
        jobs = runner.jobs()
        counters = runner.metrics
        info = GaugeMetricFamily("securetrain_agent_info", "The agent and the TEE it runs in.", labels=["tee_type"])
        info.add_metric([runner.tee_type], 1)
        yield info
        by_state = Counter(job.state for job in jobs)
        states = GaugeMetricFamily("securetrain_agent_jobs", "Jobs known to the agent, by state.", labels=["state"])
        for state in JobState:
            states.add_metric([state.value], by_state.get(state, 0))
        yield states
        finished = CounterMetricFamily(
            "securetrain_agent_jobs_finished", "Jobs that ended since the agent started.", labels=["state"]
        )
        for state, count in counters.jobs_finished.items():
            finished.add_metric([state], count)
        yield finished
        yield CounterMetricFamily(
            "securetrain_agent_epochs_completed", "Epochs completed (checkpoint sealed).", value=counters.epochs_completed
        )
        yield CounterMetricFamily("securetrain_agent_attestations", "Tokens obtained and validated.", value=counters.attestations)
        yield CounterMetricFamily(
            "securetrain_agent_attestation_failures", "Attestations that failed.", value=counters.attestation_failures
        )
        yield CounterMetricFamily("securetrain_agent_key_releases", "KEKs released to this TEE.", value=counters.key_releases)
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
    """The exposition text for the agent behind ``runner``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RunnerCollector(runner))
    return generate_latest(registry).decode()
