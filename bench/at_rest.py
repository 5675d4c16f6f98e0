"""Cost at rest as work grows: N sessions, each with one long run in flight, on one
leasegate server, and nothing else happening.

The runs are posted (echo agent, `metadata.delay_ms` 600000: they outlast the phase) with
a bounded number of concurrent requests, one run per session so that no queue cap is near;
N grows step by step (the runs of a step stay in flight for the next ones). After each
step, once every new run has had its first heartbeat interval, the benchmark measures for
a window of whole heartbeat intervals: Redis round trips per second from a MONITOR kept
for the window (batches, a pipeline counted once however many reads it took; heartbeat
renewals told from the sweeper's), socket reads (`total_reads_processed`) and commands
(`total_commands_processed`, scripts' inner commands included) from INFO, and the CPU of
the workers and of redis-server (per-thread schedstat, nanoseconds; redis-server's
includes feeding the MONITOR). At the end every session is stopped with
`POST /v1/sessions/{id}/stop`; a stop that cancels nothing means the run had already ended
(e.g. its lease was lost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from bench import loadgen
from bench.machine import precise_seconds
from bench.monitor import Monitor, Rates, rates
from bench.procs import Server
from bench.redis_cost import Probe

LONG: dict[str, object] = {"text": "stay a while", "metadata": {"delay_ms": 600_000}}
REQUEST_TIMEOUT = 30.0
SETTLE_MARGIN = 0.5
"""Seconds past one heartbeat interval after the last post before a window starts."""


@dataclass(frozen=True)
class AtRest:
    """One window with `runs` runs in flight."""

    runs: int
    workers: int
    interval: float
    """The lease heartbeat interval (TTL / 3 by default)."""
    seconds: float
    sample: Rates
    """Round trips by who sent them (MONITOR)."""
    reads: int
    """Socket reads of client connections (INFO)."""
    commands: int
    worker_cpu: float
    """CPU seconds of all the workers over the window."""
    redis_cpu: float
    post_seconds: float = 0.0
    """How long posting this step's new runs took."""
    posted: int = 0
    """Runs posted in this step."""

    @property
    def round_trips_per_s(self) -> float:
        return self.sample.round_trips

    @property
    def reads_per_s(self) -> float:
        return self.reads / self.seconds

    @property
    def commands_per_s(self) -> float:
        return self.commands / self.seconds

    @property
    def per_interval(self) -> float | None:
        """Round trips per worker per 100 held leases per heartbeat interval."""
        if not self.runs:
            return None
        return self.round_trips_per_s * self.interval / self.workers / (self.runs / 100)

    @property
    def worker_ms_per_s(self) -> float:
        return self.worker_cpu / self.seconds * 1000

    @property
    def redis_ms_per_s(self) -> float:
        return self.redis_cpu / self.seconds * 1000

    def per_run_us(self, baseline: AtRest | None = None) -> float | None:
        """Worker CPU µs per second per run in flight; above `baseline`'s when given."""
        if not self.runs:
            return None
        floor = baseline.worker_ms_per_s if baseline is not None else 0.0
        return (self.worker_ms_per_s - floor) / self.runs * 1000


@dataclass
class AtRestResult:
    steps: list[AtRest] = field(default_factory=list)
    sessions: int = 0
    """Sessions posted to in all."""
    still_running: int = 0
    """Sessions whose stop at the end cancelled a run."""
    stopped: bool = False
    """Whether every session was stopped at the end."""
    failure: str | None = None
    """What ended the phase early, if anything did."""

    @property
    def baseline(self) -> AtRest | None:
        return next((step for step in self.steps if step.runs == 0), None)


def measure_at_rest(
    server: Server,
    probe: Probe,
    redis_pid: int,
    prefix: str,
    *,
    counts: tuple[int, ...],
    seconds: float,
    interval: float,
    posters: int,
    scripts: dict[str, str],
) -> AtRestResult:
    result = AtRestResult()
    sessions: list[str] = []
    target = 0
    try:
        for target in sorted(counts):
            new = [f"{prefix}-{number}" for number in range(len(sessions), target)]
            sessions.extend(new)  # before posting: whatever was started gets stopped
            result.sessions = len(sessions)
            started = time.monotonic()
            refused = loadgen.run_async(_post_all(server.url, new, posters))
            post_seconds = time.monotonic() - started
            if refused:
                raise RuntimeError(f"{refused} of {len(new)} long runs were not started")
            if new:
                time.sleep(interval + SETTLE_MARGIN)
            step = _window(server, probe, redis_pid, scripts, target, seconds, interval)
            result.steps.append(dataclasses.replace(step, post_seconds=post_seconds,
                                                    posted=len(new)))  # fmt: skip
            _print(result.steps[-1])
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        result.failure = f"at N = {target:,}: {type(exc).__name__}: {exc}"
        print(f"  at rest: failed {result.failure}", flush=True)
    finally:
        try:
            result.still_running = loadgen.run_async(_stop_all(server.url, sessions, posters))
            result.stopped = True
        except (httpx.HTTPError, OSError) as exc:
            extra = f"stopping the {len(sessions):,} sessions failed: {exc}"
            result.failure = f"{result.failure}; {extra}" if result.failure else extra
    return result


def _window(
    server: Server,
    probe: Probe,
    redis_pid: int,
    scripts: dict[str, str],
    runs: int,
    seconds: float,
    interval: float,
) -> AtRest:
    pids = server.worker_pids()
    if len(pids) < server.workers:
        raise RuntimeError(f"{server.workers - len(pids)} worker(s) of {server.name} are gone")
    monitor = Monitor("127.0.0.1", probe.port).start()
    try:
        workers_before = sum(precise_seconds(pid) for pid in pids)
        redis_before = precise_seconds(redis_pid)
        before, started = probe.snapshot(), time.monotonic()
        time.sleep(seconds)
        counters, elapsed = probe.snapshot().minus(before), time.monotonic() - started
        worker_cpu = sum(precise_seconds(pid) for pid in pids) - workers_before
        redis_cpu = precise_seconds(redis_pid) - redis_before
    finally:
        lines = monitor.stop()
    return AtRest(runs, len(pids), interval, elapsed, rates(lines, scripts, elapsed),
                  counters.reads, counters.processed, worker_cpu, redis_cpu)  # fmt: skip


def _print(step: AtRest) -> None:
    per = step.per_interval
    print(f"  at rest, {step.runs:,} runs: {step.round_trips_per_s:,.1f} round trips/s"
          + (f" ({per:.2f} per worker per 100 leases per interval)" if per is not None else "")
          + f", workers {step.worker_ms_per_s:.1f} ms CPU/s", flush=True)  # fmt: skip


# --- posting and stopping ---------------------------------------------------------------


def _client(url: str, posters: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=posters, max_keepalive_connections=posters)
    return httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits)


async def _each(sessions: list[str], posters: int, call: _Call) -> list[bool]:
    """`call` for every session, at most `posters` at a time; whether each succeeded."""
    outcomes: list[bool] = []
    pending: Iterator[str] = iter(sessions)

    async def poster() -> None:
        for session in pending:  # one shared iterator: each session is taken once
            outcomes.append(await call(session))

    await asyncio.gather(*(poster() for _ in range(posters)))
    return outcomes


class _Call:
    def __init__(self, client: httpx.AsyncClient, path: str, body: dict[str, object] | None):
        self.client, self.path, self.body = client, path, body

    async def __call__(self, session: str) -> bool:
        if self.body is not None:  # a post: whether its run started at once
            try:
                response = await self.client.post(self.path.format(session), json=self.body)
            except httpx.HTTPError:
                return False
            return response.status_code == 202 and response.json().get("status") == "running"
        response = await self.client.post(self.path.format(session))
        response.raise_for_status()  # a stop: whether it cancelled a run
        return bool(response.json().get("cancelled"))


async def _post_all(url: str, sessions: list[str], posters: int) -> int:
    """Post a long run to each session; how many were refused or did not start at once."""
    async with _client(url, posters) as client:
        call = _Call(client, "/v1/sessions/{}/messages", LONG)
        return (await _each(sessions, posters, call)).count(False)


async def _stop_all(url: str, sessions: list[str], posters: int) -> int:
    """Stop every session; how many stops cancelled a run."""
    async with _client(url, posters) as client:
        call = _Call(client, "/v1/sessions/{}/stop", None)
        return sum(await _each(sessions, posters, call))
