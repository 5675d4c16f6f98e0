"""What the service benchmark measures with (Config) and what it found (Results)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from bench.agui import AguiResult
from bench.at_rest import AtRestResult
from bench.loadgen import Latencies, Throughput
from bench.machine import CpuSplit
from bench.profile import Profile
from bench.scenarios import Contention, Cost, HeldQueue, StopLatency

GATEWAYS = ("leasegate", "naive", "bare")
"""leasegate; the naive in-process gateway (bench/naive.py); the bare endpoint
(bench/bare.py), which ignores `?wait` and answers 202 at once."""
KINDS = ("admission", "end_to_end")
"""`POST .../messages` answered 202; `POST .../messages?wait=10` answered 200 once the run
has ended (the bare endpoint's one figure stands for both)."""
WORKER_COUNTS = (1, 2)
LATENCY_WORKERS = 2
QUERY = {"admission": "", "end_to_end": "?wait=10"}
EXPECT = {"admission": 202, "end_to_end": 200}


def _default(setting: str, fallback: float) -> float:
    """A leasegate setting's default, as app/settings.py declares it."""
    try:
        from app.settings import Settings

        return float(Settings.model_fields[setting].default)
    except (ImportError, KeyError, TypeError, ValueError):
        return fallback


@dataclass(frozen=True)
class Config:
    window: float = 6.0
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
    contention_workers: int = 4
    stop_repetitions: int = 50
    cost_messages: int = 1000
    monitor_messages: int = 20
    idle_seconds: float = 5.0
    profile_seconds: float = 10.0
    agui_connections: int = 16
    """Concurrent runs (each its own session) of the AG-UI phase."""
    agui_window: float = 8.0
    """Seconds of each measured window of the AG-UI phase (after a `warmup`)."""
    at_rest_counts: tuple[int, ...] = (0, 10, 100, 1000, 5000)
    at_rest_intervals: int = 3
    """Heartbeat intervals per at-rest window: a whole number of them, so that the window
    holds the same share of every run's renewals, however the runs' phases fall."""
    at_rest_posters: int = 32
    at_rest_workers: int = 2
    lease_ttl: float = field(default_factory=lambda: _default("lease_ttl_seconds", 10.0))
    """LEASEGATE_LEASE_TTL_SECONDS's default, left as it is; the heartbeat runs every TTL/3."""

    @property
    def heartbeat_interval(self) -> float:
        return self.lease_ttl / 3

    @property
    def at_rest_seconds(self) -> float:
        return self.at_rest_intervals * self.heartbeat_interval


QUICK = Config(window=2.0, warmup=1.0, rounds=1, rate_seconds=3.0, contention_messages=200,
               stop_repetitions=5, cost_messages=100, monitor_messages=5, idle_seconds=1.0,
               profile_seconds=2.0, agui_window=2.0, at_rest_counts=(0, 10, 100, 300),
               at_rest_intervals=2)  # fmt: skip


@dataclass(frozen=True)
class Windows:
    """Consecutive closed-loop windows of one kind of request on one server."""

    windows: list[Throughput]
    cpu: CpuSplit | None = None
    """Cores used during the measured windows, by who."""

    @property
    def median(self) -> Throughput:
        ranked = sorted(self.windows, key=lambda window: window.rate)
        return ranked[len(ranked) // 2]

    @property
    def rate(self) -> float:
        return statistics.median(window.rate for window in self.windows)

    @property
    def cpu_ms(self) -> float | None:
        """Worker CPU milliseconds per request answered as expected."""
        if self.cpu is None or self.rate <= 0:
            return None
        return self.cpu.workers / self.rate * 1000


@dataclass
class Results:
    config: Config
    tool: str
    throughput: dict[tuple[str, int, str], Windows] = field(default_factory=dict)
    """(gateway, workers, kind) -> windows."""
    latency: dict[str, Latencies] = field(default_factory=dict)
    """gateway -> `?wait=10` at a fixed rate, LATENCY_WORKERS workers."""
    cost: Cost | None = None
    stop: StopLatency | None = None
    contention: Contention | None = None
    held_queue: HeldQueue | None = None
    at_rest: AtRestResult | None = None
    agui: AguiResult | None = None
    profiles: dict[str, Profile | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Anything that went wrong on the way (a phase that failed, a server that did not
    stop)."""

    def windows(self, gateway: str, workers: int, kind: str) -> Windows | None:
        if gateway == "bare":
            kind = "admission"
        return self.throughput.get((gateway, workers, kind))

    def rate(self, gateway: str, workers: int, kind: str) -> float | None:
        measured = self.windows(gateway, workers, kind)
        return measured.rate if measured is not None else None
