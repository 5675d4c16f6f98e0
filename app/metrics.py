"""Prometheus metrics, built per application on a registry passed in (no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class Metrics:
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
        self.sweeper_recoveries = Counter(
            "leasegate_sweeper_recoveries",
            "Sessions taken over from a holder that died or left.",
            registry=self.registry,
        )
