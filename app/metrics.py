"""Prometheus metrics, built per application on a registry passed in (no module globals)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Every metric of one process. With PROMETHEUS_MULTIPROC_DIR set (as `leasegate serve`
    does), each worker writes its values to files there and `exposition()` sums all
    workers' values, so a scrape of any worker shows the whole server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.lease_acquisitions = Counter(
            "leasegate_lease_acquisitions",
            "Lease acquire attempts by outcome (granted, held).",
            ["outcome"],
            registry=self.registry,
        )
        self.lease_renewals = Counter(
            "leasegate_lease_renewals",
            "Lease renewals by outcome (ok, not_owned, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.lease_losses = Counter(
            "leasegate_lease_losses",
            "Leases lost while held, by reason (taken, unreachable).",
            ["reason"],
            registry=self.registry,
        )
        self.admissions = Counter(
            "leasegate_admissions",
            "Admission decisions by outcome (started, queued, rejected, queue_full, duplicate).",
            ["outcome"],
            registry=self.registry,
        )
        self.runs_finished = Counter(
            "leasegate_runs_finished",
            "Runs ended by their holder, by terminal status.",
            ["status"],
            registry=self.registry,
        )
        self.stale_writes = Counter(
            "leasegate_stale_fence_writes_refused",
            "Writes refused because the writer's fence was no longer current.",
            registry=self.registry,
        )
        self.switches = Counter(
            "leasegate_subscription_switches",
            "Subscription failure handling by outcome (switched, stale, no_alternative, manual).",
            ["outcome"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "leasegate_subscription_refusals",
            "Subscriptions refused by their upstream, by kind (rate_limit, quota, auth).",
            ["kind"],
            registry=self.registry,
        )
        self.sweeper_recoveries = Counter(
            "leasegate_sweeper_recoveries",
            "Sessions taken over from a holder that died or left.",
            registry=self.registry,
        )
        self.queue_depth = Histogram(
            "leasegate_queue_depth",
            "Position of each queued run at admission (0: it started at once).",
            buckets=(0, 1, 2, 5, 10, 20, 50, 100),
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "leasegate_run_duration_seconds",
            "Time from a run's start to its outcome, on its holder.",
            ["status"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200),
            registry=self.registry,
        )
        self.capacity_held = Gauge(
            "leasegate_capacity_slots_held",
            "Capacity slots held by runs of this worker, per capped resource.",
            ["resource"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.capacity_waiting = Gauge(
            "leasegate_capacity_slots_waiting",
            "Runs of this worker waiting for a capacity slot, per capped resource.",
            ["resource"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.capacity_wait = Histogram(
            "leasegate_capacity_wait_seconds",
            "How long runs waited for a capacity slot, by kind (agent, subscription, tenant, "
            "fleet) and outcome (granted, expired, left).",
            ["kind", "outcome"],
            buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
            registry=self.registry,
        )
        self.capacity_losses = Counter(
            "leasegate_capacity_slot_losses",
            "Capacity slots lost while their run ran, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.gate_wait = Histogram(
            "leasegate_reload_gate_wait_seconds",
            "How long runs waited at a closed reload gate while their agent drained and reloaded.",
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
            registry=self.registry,
        )
        self.reloads = Counter(
            "leasegate_agent_reloads",
            "Reload hooks called on a subscription switch, by outcome (ok, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.drain_requeued = Counter(
            "leasegate_drain_requeued_runs",
            "Runs still on the old subscription at a drain timeout, re-queued at their head.",
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "leasegate_redis_errors",
            "Requests answered 503 because Redis could not be reached.",
            registry=self.registry,
        )

    def runs_finished_here(self) -> int:
        """Runs this process has ended, all statuses (the worker registry reports it)."""
        return int(
            sum(
                sample.value
                for metric in self.runs_finished.collect()
                for sample in metric.samples
                if sample.name.endswith("_total")
            )
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of this process, or of every worker in multiprocess mode."""
        if os.environ.get(MULTIPROCESS_DIR):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
