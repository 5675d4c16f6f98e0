"""The AG-UI phase of the service benchmark: what running an agent served over AG-UI
through leasegate costs against calling the same agent directly.

One AG-UI agent process (bench/agui_agent.py: Pydantic AI, FunctionModel, a short reply at
once) and 2-worker leasegate servers whose agents file names it (`backend = "ag-ui"`) beside
the built-in echo agent, a fresh one on an emptied Redis for each leg. Every request is its
own session (one run at a time per session); each leg is a warm-up and a measured window,
with the same number of connections:

* direct: POST a RunAgentInput to the agent and read its event stream to the end
  (RUN_FINISHED), closed loop;
* agui: `POST /v1/sessions/{fresh}/messages?wait=10` with the AG-UI agent's `agent_id`,
  closed loop, counted once the answer says the run completed;
* paced: the same with the echo agent, open loop at the runs/s the agui leg completed, so
  the hop's cost per run = worker CPU per AG-UI run - worker CPU per echo run, at one rate;
* echo: the echo agent closed loop (how fast leasegate runs at this concurrency without
  the hop).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import loadgen
from bench.loadgen import FAILED, SEND_TIMEOUT, STALE, Latencies, Sample
from bench.machine import CpuMeter, CpuSplit, process_seconds
from bench.procs import Server
from bench.report import markdown_table

AGUI_AGENT_ID = "bench-agui"
ECHO_AGENT_ID = "echo"
NOT_COMPLETED = 599
"""The status recorded for an answer that came but did not end in a completed run."""


def agents_file(agent_url: str) -> str:
    return (
        f'[[agents]]\nid = "{ECHO_AGENT_ID}"\nbackend = "echo"\n\n'
        f'[[agents]]\nid = "{AGUI_AGENT_ID}"\nbackend = "ag-ui"\nurl = "{agent_url}"\n'
    )


@dataclass(frozen=True)
class Load:
    """How each leg is driven: this many connections, a warm-up, then a measured window."""

    connections: int
    warmup: float
    seconds: float


@dataclass(frozen=True)
class Leg:
    """One measured window of one way to run the agent."""

    name: str
    latencies: Latencies
    seconds: float
    cpu: CpuSplit | None = None
    """Cores used during the window, by who (leasegate legs: its workers)."""
    agent_cores: float | None = None
    """Cores the AG-UI agent process used during the window."""

    @property
    def ok(self) -> int:
        return self.latencies.count(200)

    @property
    def other(self) -> int:
        return len(self.latencies.samples) - self.ok

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def ms(self, pct: float) -> float:
        return self.latencies.ms(pct, status=200)

    @property
    def worker_ms(self) -> float | None:
        """leasegate worker CPU milliseconds per completed run."""
        if self.cpu is None or self.rate <= 0:
            return None
        return self.cpu.workers / self.rate * 1000

    @property
    def agent_ms(self) -> float | None:
        if self.agent_cores is None or self.rate <= 0:
            return None
        return self.agent_cores / self.rate * 1000


@dataclass
class AguiResult:
    connections: int
    window: float
    legs: dict[str, Leg] = field(default_factory=dict)
    """"direct", "agui" (through leasegate), "echo" (through leasegate, closed loop),
    "paced" (the echo agent through leasegate at the "agui" leg's runs/s)."""

    @property
    def baseline(self) -> Leg | None:
        """The echo leg the hop is judged against: paced at the AG-UI leg's rate (per-run
        CPU falls as the rate grows, so the closed-loop echo leg, many times faster, would
        flatter it less fairly), else the closed-loop one."""
        for key in ("paced", "echo"):
            leg = self.legs.get(key)
            if leg is not None and leg.worker_ms is not None:
                return leg
        return None

    @property
    def hop_ms(self) -> float | None:
        """Worker CPU per run the AG-UI hop adds: AG-UI run - echo run (`baseline`)."""
        agui, echo = self.legs.get("agui"), self.baseline
        if agui is None or echo is None or agui.worker_ms is None or echo.worker_ms is None:
            return None
        return agui.worker_ms - echo.worker_ms


# --- the direct client: a RunAgentInput POSTed, its event stream read to the end ---------


def run_input(thread_id: str, text: str = "hello") -> bytes:
    return json.dumps({
        "threadId": thread_id, "runId": f"{thread_id}:run", "state": {},
        "messages": [{"id": f"{thread_id}:user", "role": "user", "content": text}],
        "tools": [], "context": [], "forwardedProps": {},
    }).encode()  # fmt: skip


class StreamConnection:
    """One keep-alive connection that reads a response to its end, chunked or not."""

    def __init__(self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._host, self._reader, self._writer = host, reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> StreamConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(host, reader, writer)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nAccept: text/event-stream\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode("latin-1") + body)
        lines = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            return status, await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding") != "chunked":
            raise ValueError(f"a response neither chunked nor sized: {lines[0]!r}")
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self._reader.readexactly(size + 2)
            if size == 0:
                return status, b"".join(parts)
            parts.append(data[:-2])

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def direct_loop(
    host: str, port: int, path: str, prefix: str, *, connections: int, seconds: float
) -> Latencies:
    """`connections` clients, each POSTing a RunAgentInput of a new thread as soon as the
    last stream ended, for `seconds`; 200 only for a stream that ends with RUN_FINISHED."""
    result, end, numbers = Latencies(), time.monotonic() + seconds, itertools.count(1)

    async def client() -> None:
        connection: StreamConnection | None = None
        while time.monotonic() < end:
            body = run_input(f"{prefix}-{next(numbers)}")
            started = time.monotonic()
            status = FAILED
            for attempt in (1, 2):
                connection = connection or await StreamConnection.open(host, port)
                try:
                    answer, data = await asyncio.wait_for(connection.post(path, body), SEND_TIMEOUT)
                    finished = answer == 200 and b"RUN_FINISHED" in data
                    status = 200 if finished else (answer if answer != 200 else NOT_COMPLETED)
                    break
                except STALE:
                    await connection.close()
                    connection = None
                    if attempt == 2:
                        break
                except (OSError, TimeoutError, ValueError):
                    await connection.close()
                    connection = None
                    break
            result.samples.append(Sample(started, time.monotonic() - started, status))
        if connection is not None:
            await connection.close()

    async with asyncio.TaskGroup() as group:
        for _ in range(connections):
            group.create_task(client())
    return result


def _completed(latencies: Latencies) -> Latencies:
    """A `?wait` answer counts (as 200) only if its run completed; bodies are dropped."""
    samples = []
    for sample in latencies.samples:
        status = sample.status
        if status == 200:
            try:
                answer = json.loads(sample.body)
            except ValueError:
                answer = {}
            run = answer.get("run") if isinstance(answer.get("run"), dict) else answer
            if run.get("status") != "completed":
                status = NOT_COMPLETED
        samples.append(Sample(sample.started, sample.latency, status))
    return Latencies(samples, latencies.late_starts)


# --- the legs ---------------------------------------------------------------------------


def _metered(
    window: Callable[[], Latencies], workers: list[int], redis_pid: int, agent_pid: int
) -> tuple[Latencies, float, CpuSplit, float]:
    """One window under the CPU meter: what it measured, its seconds, the cores by who,
    and the cores of the agent process."""
    meter, agent_before = CpuMeter.begin(workers, redis_pid), process_seconds(agent_pid)
    started = time.monotonic()
    latencies = window()
    elapsed = time.monotonic() - started
    cpu = meter.end()
    agent_cores = (process_seconds(agent_pid) - agent_before) / max(elapsed, 1e-9)
    return latencies, elapsed, cpu, agent_cores


def direct_leg(agent: Server, path: str, redis_pid: int, load: Load) -> Leg:
    def window(length: float, name: str) -> Latencies:
        prefix = loadgen.unique_prefix(name)
        return loadgen.run_async(direct_loop("127.0.0.1", agent.port, path, prefix,
                                             connections=load.connections,
                                             seconds=length))  # fmt: skip

    window(load.warmup, "agui-direct-warmup")
    measured = _metered(
        lambda: window(load.seconds, "agui-direct"), [], redis_pid, agent.process.pid
    )
    latencies, elapsed, _, agent_cores = measured
    return Leg("direct", latencies, elapsed, None, agent_cores)


def leasegate_leg(
    name: str, server: Server, agent: Server, agent_id: str, redis_pid: int, load: Load
) -> Leg:
    body = json.dumps({"text": "hello", "agent_id": agent_id}).encode()

    def window(length: float, prefix: str) -> Latencies:
        paths = loadgen.session_paths(loadgen.unique_prefix(prefix), "?wait=10")
        return _completed(loadgen.run_async(loadgen.closed_loop(
            "127.0.0.1", server.port, paths, connections=load.connections, seconds=length,
            body=body, keep_body=True)))  # fmt: skip

    window(load.warmup, f"agui-{name}-warmup")
    latencies, elapsed, cpu, agent_cores = _metered(
        lambda: window(load.seconds, f"agui-{name}"), server.worker_pids(), redis_pid,
        agent.process.pid,
    )  # fmt: skip
    return Leg(name, latencies, elapsed, cpu, agent_cores if agent_id == AGUI_AGENT_ID else None)


def paced_leg(server: Server, redis_pid: int, rate: float, load: Load) -> Leg:
    """The echo agent through leasegate at `rate` runs/s (open loop, latency from each
    request's scheduled send time); a 200 counts (the echo agent does not fail)."""
    body = json.dumps({"text": "hello", "agent_id": ECHO_AGENT_ID}).encode()

    def window(length: float, prefix: str) -> Latencies:
        paths = loadgen.session_paths(loadgen.unique_prefix(prefix), "?wait=10")
        return loadgen.run_async(loadgen.open_loop(
            "127.0.0.1", server.port, paths, rate=rate, seconds=length,
            connections=load.connections, body=body))  # fmt: skip

    window(load.warmup, "agui-paced-warmup")
    latencies, elapsed, cpu, _ = _metered(
        lambda: window(load.seconds, "agui-paced"), server.worker_pids(), redis_pid, 0
    )
    return Leg("paced", latencies, elapsed, cpu, None)


def describe(leg: Leg) -> str:
    cpu = f", worker CPU {leg.worker_ms:.2f} ms/run" if leg.worker_ms is not None else ""
    return (f"  {leg.name}: {leg.rate:,.0f} runs/s, p50 {leg.ms(50):.1f} ms, "
            f"p99 {leg.ms(99):.1f} ms, {leg.other} other{cpu}")  # fmt: skip


# --- the report -------------------------------------------------------------------------

LABELS = {
    "direct": "direct to the AG-UI agent (RunAgentInput, SSE to RUN_FINISHED)",
    "agui": "through leasegate to the AG-UI agent (`?wait=10`)",
    "paced": "through leasegate to the echo agent, paced at the AG-UI leg's runs/s",
    "echo": "through leasegate to the echo agent, closed loop",
}


def agui_table(result: AguiResult) -> str:
    rows = []
    for key, label in LABELS.items():
        leg = result.legs.get(key)
        if leg is None:
            rows.append([label, *("-" * 7)])
            continue
        rows.append([
            label, f"{leg.rate:,.0f}", f"{leg.ms(50):.1f}", f"{leg.ms(99):.1f}",
            f"{leg.ok:,}", str(leg.other),
            "-" if leg.worker_ms is None else f"{leg.worker_ms:.2f}",
            "-" if leg.agent_ms is None else f"{leg.agent_ms:.2f}",
        ])  # fmt: skip
    header = ["one run per session, distinct sessions", "runs/s", "p50 ms", "p99 ms",
              "runs", "other", "leasegate worker CPU ms/run",
              "agent process CPU ms/run"]  # fmt: skip
    return markdown_table(header, rows)


def agui_text(result: AguiResult, echo_elsewhere: tuple[float, float] | None) -> str:
    """The sentences under the table: the hop's cost, and how it was computed."""
    notes = []
    direct, agui = result.legs.get("direct"), result.legs.get("agui")
    if direct is not None and agui is not None and direct.rate > 0:
        notes.append(
            f"Through leasegate the AG-UI agent completes {agui.rate / direct.rate:.2f}x the "
            f"runs/s of calling it directly ({agui.rate:,.0f} vs {direct.rate:,.0f}); p50 "
            f"{agui.ms(50) - direct.ms(50):+.1f} ms, p99 {agui.ms(99) - direct.ms(99):+.1f} ms."
        )
        if agui.cpu is not None and agui.agent_cores is not None:
            rest = max(0.0, agui.cpu.others - agui.agent_cores)
            notes.append(
                f"Everything shares the machine's {os.cpu_count()} cores: the agent process "
                f"used {direct.agent_cores or 0:.2f} cores called directly and "
                f"{agui.agent_cores:.2f} through leasegate, beside {agui.cpu.workers:.2f} of "
                f"leasegate's workers, {agui.cpu.redis:.2f} of redis-server, "
                f"{agui.cpu.load:.2f} of the load generator and {rest:.2f} of every other "
                "process."
            )
    echo = result.baseline
    if (hop := result.hop_ms) is not None and agui is not None and echo is not None:
        how = ("paced at the AG-UI leg's runs/s" if echo.name == "paced"
               else "closed loop at the same concurrency")  # fmt: skip
        notes.append(
            f"The hop's cost, judged: {agui.worker_ms:.2f} - {echo.worker_ms:.2f} = "
            f"{hop:.2f} ms of leasegate worker CPU per run (worker CPU per AG-UI run minus "
            f"per echo run, each on a fresh 2-worker server with the same settings, the echo "
            f"runs {how})."
        )
        others = [
            (f"the closed-loop echo leg, at {leg.rate:,.0f} runs/s,", leg.worker_ms)
            for leg in (result.legs.get("echo"),)
            if leg is not None and leg is not echo and leg.worker_ms is not None
        ]
        if echo_elsewhere is not None:
            ms, rate = echo_elsewhere
            others.append((f"the throughput phase's echo `?wait` figure, at {rate:,.0f} req/s "
                           "(wrk, 64 connections),", ms))  # fmt: skip
        assert agui.worker_ms is not None
        notes.extend(f"Against {what} {ms:.2f} ms, it would be {agui.worker_ms - ms:.2f} ms."
                     for what, ms in others)  # fmt: skip
        if others:
            notes.append("Per-run worker CPU falls as the rate grows (fixed costs and event "
                         "loop wake-ups are shared by more runs), so the verdict compares "
                         "runs at the same rate.")  # fmt: skip
    return " ".join(notes)


def method(connections: int, warmup: float, window: float) -> str:
    return (
        "AG-UI: one agent process (`bench/agui_agent.py`: a Pydantic AI agent on a "
        "FunctionModel that answers a short text at once, served over AG-UI by pydantic-ai's "
        "adapter under a 1-worker uvicorn) and 2-worker leasegate servers whose agents "
        'file names it (`backend = "ag-ui"`) beside the echo agent, a fresh one on an '
        "emptied Redis per leg. Four legs, each with "
        f"the Python closed-loop generator, {connections} keep-alive connections, every "
        f"request a new session, a {warmup:g} s warm-up and one {window:g} s window: direct "
        "(a RunAgentInput POSTed to the agent, its event stream read to RUN_FINISHED), then "
        "through leasegate to the AG-UI agent; to the echo agent paced (open loop, the same "
        "connections, latency from each request's scheduled send time) at the runs/s the "
        "AG-UI leg completed; to the echo agent closed loop. "
        "A `?wait` answer counts only if its run completed; p50/p99 over the counted runs. "
        "Worker CPU from /proc over the window, divided by the runs completed in it; the "
        "hop's cost = worker CPU per AG-UI run - per paced echo run."
    )
