"""The service benchmark's measurements other than throughput and the cost at rest: stop
latency across processes, contention on one session, and the Redis cost of a message."""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from bench import loadgen
from bench.loadgen import Latencies
from bench.monitor import Monitor, Sequence, parse_messages, summarize
from bench.procs import Server
from bench.redis_cost import Probe, Snapshot

SETTLE_TIMEOUT = 150.0
IDLE_TIMEOUT = 120.0
SLOW = {"text": "think slowly", "metadata": {"delay_ms": 600_000}}
RUNNING_PAUSE = 0.1  # after a slow run was admitted, before it is stopped


def settle(probe: Probe, timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait until the sweeper has dropped every session from its index (each session stays
    there for 2 lease TTLs after its last admission); the seconds it took."""
    started = time.monotonic()
    while probe.indexed_sessions() > 0:
        if time.monotonic() - started > timeout:
            print(f"  warning: sessions still indexed after {timeout:g} s", flush=True)
            break
        time.sleep(0.5)
    return time.monotonic() - started


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# --- stop latency -----------------------------------------------------------------------


@dataclass(frozen=True)
class StopLatency:
    to_finished_ms: list[float]
    """From just before the stop request was sent to the run's `finished_at`."""
    request_ms: list[float]
    """The stop request's own round trip."""
    failures: int


def measure_stop(holder: Server, other: Server, prefix: str, repetitions: int) -> StopLatency:
    """A slow run admitted by `holder`, stopped through `other` (another process)."""
    finished: list[float] = []
    requests: list[float] = []
    failures = 0
    with httpx.Client(timeout=10) as client:
        for number in range(repetitions):
            session = f"{prefix}-{number}"
            run_id = _admit_slow(client, holder.url, session)
            time.sleep(RUNNING_PAUSE)
            sent = time.time()
            stopped = client.post(f"{other.url}/v1/sessions/{session}/stop")
            requests.append((time.time() - sent) * 1000)
            run = _until_terminal(client, holder.url, run_id)
            if run_id not in stopped.json().get("cancelled", []) or run["status"] != "cancelled":
                failures += 1
                continue
            finished.append((epoch(run["finished_at"]) - sent) * 1000)
    return StopLatency(finished, requests, failures)


def _admit_slow(client: httpx.Client, url: str, session: str) -> str:
    response = client.post(f"{url}/v1/sessions/{session}/messages", json=SLOW)
    response.raise_for_status()
    body = response.json()
    if body["status"] != "running":
        raise RuntimeError(f"the slow run did not start at once: {body}")
    return str(body["run_id"])


def _until_terminal(client: httpx.Client, url: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        run: dict[str, Any] = client.get(f"{url}/v1/runs/{run_id}").json()
        if run["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return run
        time.sleep(0.005)


# --- contention -------------------------------------------------------------------------


@dataclass(frozen=True)
class Contention:
    admission: Latencies
    positions: list[int]
    """Queue position of each accepted admission, in the order of `admission.samples`."""
    statuses: Counter[int]
    runs: int
    drain_seconds: float
    memory_bytes: int
    """Redis' data memory after the drain (and the sweeper) minus before the burst."""

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.drain_seconds if self.drain_seconds > 0 else 0.0


def measure_contention(
    server: Server, probe: Probe, session: str, messages: int, connections: int
) -> Contention:
    """`messages` posted at once (over `connections` connections) to one session."""
    before = probe.snapshot()
    host, port = "127.0.0.1", server.port
    posted = loadgen.run_async(
        loadgen.closed_loop(host, port, loadgen.same_session_paths(session),
                            connections=connections, total=messages, keep_body=True)
    )  # fmt: skip
    accepted = [s for s in posted.samples if s.status == 202]
    positions = [int(_json(s.body)["queue_position"]) for s in accepted]
    _until_idle(server, session)
    started, ended, count = _drain_window(server, session)
    settle(probe)
    memory = probe.snapshot().minus(before).used_memory
    return Contention(Latencies(accepted), positions, Counter(s.status for s in posted.samples),
                      count, ended - started, memory)  # fmt: skip


@dataclass(frozen=True)
class HeldQueue:
    """Admissions from one poster, one after another, while a slow run holds the session:
    nothing drains, so each lands one place further back in the queue."""

    admission: Latencies
    positions: list[int]


def measure_held_queue(server: Server, session: str, messages: int) -> HeldQueue:
    with httpx.Client(timeout=10) as client:
        _admit_slow(client, server.url, session)
        posted = loadgen.run_async(
            loadgen.closed_loop("127.0.0.1", server.port, loadgen.same_session_paths(session),
                                connections=1, total=messages, keep_body=True)
        )  # fmt: skip
        client.post(f"{server.url}/v1/sessions/{session}/stop").raise_for_status()
    accepted = [s for s in posted.samples if s.status == 202]
    positions = [int(_json(s.body)["queue_position"]) for s in accepted]
    return HeldQueue(Latencies(accepted), positions)


def _json(body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(body)
    return value


def _until_idle(server: Server, session: str) -> None:
    deadline = time.monotonic() + IDLE_TIMEOUT
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            view = client.get(f"{server.url}/v1/sessions/{session}").json()
            if view["state"] == "idle" and not view["queued"]:
                return
            time.sleep(0.2)
    raise RuntimeError(f"session {session} still busy after {IDLE_TIMEOUT:g} s")


def _drain_window(server: Server, session: str) -> tuple[float, float, int]:
    """First started_at, last finished_at (epoch seconds) and count of the session's runs."""
    runs: list[dict[str, Any]] = []
    offset: int | None = 0
    with httpx.Client(timeout=10) as client:
        while offset is not None:
            page = client.get(f"{server.url}/v1/sessions/{session}/runs",
                              params={"limit": 100, "offset": offset}).json()  # fmt: skip
            runs.extend(page["runs"])
            offset = page["next_offset"]
    done = [r for r in runs if r["started_at"] and r["finished_at"]]
    if not done:
        raise RuntimeError(f"session {session}: no finished run")
    first = min(epoch(r["started_at"]) for r in done)
    last = max(epoch(r["finished_at"]) for r in done)
    return first, last, len(done)


# --- Redis cost -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    messages: int
    failures: int
    window: Snapshot
    """Counters over the N `?wait` messages."""
    with_sweeper: Snapshot
    """Counters from before the messages until the sweeper had dropped their sessions."""
    settle_seconds: float
    """How long the sweeper took to drop them from its index."""
    idle: Snapshot
    idle_seconds: float
    waited: Sequence
    """MONITOR sample of `?wait` messages, one at a time."""
    waited_reads: float
    """Socket reads per message during that sample (request path and after)."""
    admitted: Sequence
    """MONITOR sample of 202 admissions, one at a time, each run left to end before the
    next message."""

    @property
    def memory_per_session(self) -> float:
        return self.with_sweeper.used_memory / self.messages


def measure_cost(
    server: Server,
    probe: Probe,
    prefix: str,
    scripts: dict[str, str],
    *,
    messages: int,
    sample: int,
    idle: float,
) -> Cost:
    """`scripts`: sha1 -> name, for EVALSHA in the MONITOR samples."""
    idle_counters = _idle(probe, idle)
    sampled = functools.partial(_monitor_sample, server, probe, scripts=scripts, count=sample)
    waited, waited_reads = sampled(f"{prefix}-wait", wait=True)
    admitted, _ = sampled(f"{prefix}-202", wait=False)
    before = probe.snapshot()
    posted = loadgen.run_async(
        loadgen.closed_loop("127.0.0.1", server.port, loadgen.session_paths(prefix, "?wait=10"),
                            connections=8, total=messages)
    )  # fmt: skip
    window = probe.snapshot().minus(before)
    seconds = settle(probe)
    with_sweeper = probe.snapshot().minus(before)
    failures = len(posted.samples) - posted.count(200)
    return Cost(messages, failures, window, with_sweeper, seconds, idle_counters, idle, waited,
                waited_reads, admitted)  # fmt: skip


def _idle(probe: Probe, seconds: float) -> Snapshot:
    before = probe.snapshot()
    time.sleep(seconds)
    return probe.snapshot().minus(before)


RUN_PAUSE = 0.05
"""After a 202, before the next message: the run (echo, no delay) ends well within it."""
AFTER_PAUSE = 0.02
"""After a `?wait` response, before the next message: what follows the response lands."""


def _monitor_sample(
    server: Server, probe: Probe, prefix: str, *, scripts: dict[str, str], count: int, wait: bool
) -> tuple[Sequence, float]:
    """Messages one after another under MONITOR, ECHO markers around each."""
    monitor = Monitor("127.0.0.1", probe.port).start()
    before = probe.snapshot()
    params = {"wait": 10} if wait else {}
    try:
        with httpx.Client(timeout=15) as client:
            for number in range(count):
                probe.mark(number)
                url = f"{server.url}/v1/sessions/{prefix}-{number}/messages"
                client.post(url, params=params, json={"text": "hello"}).raise_for_status()
                probe.replied(number)
                time.sleep(AFTER_PAUSE if wait else RUN_PAUSE)
            probe.mark(count)  # closes the last message's group
        counters = probe.snapshot().minus(before)
    finally:
        lines = monitor.stop()
    messages = parse_messages(lines, scripts)[:count]
    return summarize(messages), counters.reads / count
