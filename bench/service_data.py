"""What the service benchmark measures with (Config) and what it found (Results)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from bench.loadgen import Latencies, Throughput
from bench.machine import CpuSplit
from bench.profile import Profile
from bench.scenarios import Contention, Cost, HeldQueue, StopLatency

SCALING = ("1 worker", "2 workers", "4 workers", "2 processes x 2 workers")
"""The scaling rows: each a warm-up and one window, from a settled index."""


@dataclass(frozen=True)
class Config:
    window: float = 8.0
    """Seconds of one closed-loop throughput window."""
    warmup: float = 2.0
    rounds: int = 3
    """Consecutive windows per throughput figure (the median is reported)."""
    connections: int = 64
    rate: float = 100.0
    """Requests/s of the fixed-rate latency measurement."""
    rate_seconds: float = 20.0
    contention_messages: int = 1000
    contention_connections: int = 50
    contention_queue_cap: int = 2000
    stop_repetitions: int = 50
    cost_messages: int = 1000
    monitor_messages: int = 20
    idle_seconds: float = 5.0
    profile_seconds: float = 10.0


QUICK = Config(window=2.0, warmup=1.0, rounds=1, rate_seconds=3.0, contention_messages=200,
               stop_repetitions=5, cost_messages=100, monitor_messages=5, idle_seconds=1.0,
               profile_seconds=2.0)  # fmt: skip


@dataclass(frozen=True)
class Windows:
    """Consecutive closed-loop windows of one kind of request on one server."""

    windows: list[Throughput]
    cpu: CpuSplit | None = None
    """Cores used during the measured windows, by who."""
    settle_seconds: float = 0.0
    """How long the sweeper then took to drop the windows' sessions from its index."""

    @property
    def median(self) -> Throughput:
        ranked = sorted(self.windows, key=lambda window: window.rate)
        return ranked[len(ranked) // 2]

    @property
    def rate(self) -> float:
        return statistics.median(window.rate for window in self.windows)


@dataclass
class Results:
    config: Config
    tool: str
    bare: Windows | None = None
    bare_latency: Latencies | None = None
    admission: Windows | None = None
    end_to_end: Windows | None = None
    latency: Latencies | None = None
    cost: Cost | None = None
    stop: StopLatency | None = None
    contention: Contention | None = None
    held_queue: HeldQueue | None = None
    scaling: dict[str, Throughput] = field(default_factory=dict)
    profiles: dict[str, Profile | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Anything that went wrong on the way (e.g. a server that did not stop)."""
