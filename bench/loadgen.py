"""Load generators of the service benchmark, the same for leasegate and the bare endpoint.

* `run_wrk`: closed-loop throughput with wrk (one thread, N keep-alive connections) and a
  Lua script that gives every request a distinct session id and counts the responses with
  the expected status. wrk is C and costs a fraction of a core, so the number is the
  server's, not the client's.
* `closed_loop`: the same in Python (asyncio streams on uvloop, raw HTTP/1.1 keep-alive);
  the fallback when wrk is missing, and the poster of the contention burst, which needs
  each response body.
* `open_loop`: requests sent on a fixed schedule (open loop), each latency measured from
  its scheduled send time, so a slow response delays no later request's start and a stall
  shows in the latency instead of lowering the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

HELLO = b'{"text": "hello"}'
WRK_MARKER = "WRK-RESULT "
SEND_TIMEOUT = 30.0  # seconds one request of a Python generator may take


# --- results ----------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """The `pct` percentile of `values` (inclusive method, 100: the largest); 0 for none."""
    if not values:
        return 0.0
    if len(values) == 1 or pct >= 100:
        return max(values)
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return cuts[max(0, min(998, round(pct * 10) - 1))]


@dataclass(frozen=True)
class Throughput:
    """One closed-loop window: responses with the expected status per second."""

    ok: int
    other: int
    seconds: float
    p50_ms: float
    p99_ms: float
    tool: str

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def __add__(self, other: Throughput) -> Throughput:
        """Two windows run side by side (two servers): rates add, latencies are the worse."""
        seconds = max(self.seconds, other.seconds)
        ok = round((self.rate + other.rate) * seconds)
        return Throughput(ok, self.other + other.other, seconds,
                          max(self.p50_ms, other.p50_ms), max(self.p99_ms, other.p99_ms),
                          self.tool)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One request of a Python generator: when it was due or sent, and what came back."""

    started: float
    """Scheduled (open loop) or actual (closed loop) send time, `time.monotonic()`."""
    latency: float
    status: int
    body: bytes = b""


@dataclass
class Latencies:
    samples: list[Sample] = field(default_factory=list)
    late_starts: int = 0
    """Open loop: requests sent more than 1 ms after their scheduled time."""

    def ms(self, pct: float, status: int | None = None) -> float:
        values = [s.latency for s in self.samples if status is None or s.status == status]
        return percentile(values, pct) * 1000

    def count(self, status: int) -> int:
        return sum(1 for s in self.samples if s.status == status)


# --- a raw HTTP/1.1 keep-alive client ---------------------------------------------------


class HttpConnection:
    """One keep-alive connection; one request at a time; Content-Length bodies only."""

    def __init__(self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._host = host
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(host, reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode("latin-1") + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status, length = _parse_head(raw)
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def _parse_head(raw: bytes) -> tuple[int, int]:
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return status, int(value.strip())
    raise ValueError(f"response without Content-Length: {lines[0]!r}")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed (uvicorn[standard] brings it)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# --- Python generators ------------------------------------------------------------------

FAILED = 0
"""The status recorded for a request that got no answer (connection lost, timeout)."""
STALE = (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError)
"""What a keep-alive connection that the server has closed meanwhile raises."""


async def exchange(
    connection: HttpConnection, host: str, port: int, path: str, body: bytes
) -> tuple[int, bytes, HttpConnection | None]:
    """POST `path`; on a stale connection once more on a new one. The status (FAILED if
    none came), the body, and the connection to use next (None: open a new one)."""
    for attempt in (1, 2):
        try:
            request = connection.request("POST", path, body)
            status, data = await asyncio.wait_for(request, SEND_TIMEOUT)
            return status, data, connection
        except STALE:
            await connection.close()
            if attempt == 1:
                connection = await HttpConnection.open(host, port)
        except (OSError, TimeoutError, ValueError):
            await connection.close()
            break
    return FAILED, b"", None


async def closed_loop(
    host: str,
    port: int,
    paths: Iterator[str],
    *,
    connections: int,
    seconds: float | None = None,
    total: int | None = None,
    body: bytes = HELLO,
    keep_body: bool = False,
) -> Latencies:
    """`connections` posters, each sending its next request as soon as one is answered,
    for `seconds` or until `total` requests were sent."""
    result = Latencies()
    end = time.monotonic() + seconds if seconds is not None else float("inf")
    budget = itertools.count() if total is None else iter(range(total))

    async def poster() -> None:
        connection: HttpConnection | None = None
        while time.monotonic() < end and next(budget, None) is not None:
            connection = connection or await HttpConnection.open(host, port)
            started = time.monotonic()
            status, data, connection = await exchange(connection, host, port, next(paths), body)
            kept = data if keep_body else b""
            result.samples.append(Sample(started, time.monotonic() - started, status, kept))
        if connection is not None:
            await connection.close()

    async with asyncio.TaskGroup() as group:
        for _ in range(connections):
            group.create_task(poster())
    return result


async def open_loop(
    host: str,
    port: int,
    paths: Iterator[str],
    *,
    rate: float,
    seconds: float,
    connections: int = 16,
    body: bytes = HELLO,
) -> Latencies:
    """`rate` requests per second for `seconds`, each sent at its scheduled time on the
    keep-alive connection idle longest (a new one if all are busy); latency from the
    scheduled time."""
    idle = deque([await HttpConnection.open(host, port) for _ in range(connections)])
    result = Latencies()

    async def send(due: float) -> None:
        connection = idle.popleft() if idle else await HttpConnection.open(host, port)
        if time.monotonic() - due > 0.001:
            result.late_starts += 1
        status, _, reusable = await exchange(connection, host, port, next(paths), body)
        result.samples.append(Sample(due, time.monotonic() - due, status))
        if reusable is not None:
            idle.append(reusable)

    try:
        await _on_schedule(send, rate, round(rate * seconds))
    finally:
        for connection in idle:
            await connection.close()
    return result


async def _on_schedule(
    send: Callable[[float], Coroutine[Any, Any, None]], rate: float, count: int
) -> None:
    start = time.monotonic() + 0.05
    async with asyncio.TaskGroup() as group:
        for number in range(count):
            due = start + number / rate
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            group.create_task(send(due))


def session_paths(prefix: str, query: str = "") -> Iterator[str]:
    """Message paths with a distinct session id each: `<prefix>-1`, `<prefix>-2`, ..."""
    for number in itertools.count(1):
        yield f"/v1/sessions/{prefix}-{number}/messages{query}"


def same_session_paths(session_id: str, query: str = "") -> Iterator[str]:
    return itertools.repeat(f"/v1/sessions/{session_id}/messages{query}")


def python_throughput(latencies: Latencies, seconds: float, expect: int) -> Throughput:
    return Throughput(
        ok=latencies.count(expect),
        other=len(latencies.samples) - latencies.count(expect),
        seconds=seconds,
        p50_ms=latencies.ms(50),
        p99_ms=latencies.ms(99),
        tool="python",
    )


# --- wrk --------------------------------------------------------------------------------

WRK_SCRIPT = """
-- Generated by bench/loadgen.py: a distinct session per request, counted by status.
wrk.method = "POST"
wrk.body = '{"text": "hello"}'
wrk.headers["Content-Type"] = "application/json"

local prefix, query, expected = "%(prefix)s", "%(query)s", %(expected)d
local threads = {}
counter, ok, other, tid = 0, 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function request()
  counter = counter + 1
  local path = "/v1/sessions/" .. prefix .. "-" .. tid .. "-" .. counter .. "/messages" .. query
  return wrk.format(nil, path)
end

function response(status, headers, body)
  if status == expected then ok = ok + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local good, bad = 0, 0
  for _, thread in ipairs(threads) do
    good = good + thread:get("ok")
    bad = bad + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"ok": %%d, "other": %%d, "socket_errors": %%d, "duration_us": %%d, '
    .. '"p50_us": %%d, "p99_us": %%d}\\n',
    good, bad, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


@dataclass(frozen=True)
class WrkJob:
    """One wrk run against one server: distinct sessions `<prefix>-<thread>-<n>`."""

    url: str
    prefix: str
    query: str = ""
    expect: int = 202
    connections: int = 64
    seconds: float = 8.0
    timeout: float = 15.0


def start_wrk(job: WrkJob, folder: Path) -> subprocess.Popen[str]:
    script = folder / f"{job.prefix}.lua"
    values = {"prefix": job.prefix, "query": job.query, "expected": job.expect,
              "marker": WRK_MARKER}  # fmt: skip
    script.write_text(WRK_SCRIPT % values)
    args = ["wrk", "-t1", f"-c{job.connections}", f"-d{max(1, round(job.seconds))}s",
            f"--timeout={round(job.timeout)}s", "-s", str(script), job.url]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_wrk(process: subprocess.Popen[str], job: WrkJob) -> Throughput:
    output, _ = process.communicate(timeout=job.seconds + job.timeout + 30)
    line = next((x for x in output.splitlines() if x.startswith(WRK_MARKER)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    data = json.loads(line.removeprefix(WRK_MARKER))
    return Throughput(
        ok=data["ok"],
        other=data["other"] + data["socket_errors"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        tool="wrk",
    )


def run_wrk(*jobs: WrkJob) -> list[Throughput]:
    """Run the jobs side by side (one wrk process each) and wait for all of them."""
    with tempfile.TemporaryDirectory(prefix="leasegate-wrk-") as folder:
        processes = [start_wrk(job, Path(folder)) for job in jobs]
        return [finish_wrk(p, job) for p, job in zip(processes, jobs, strict=True)]


def throughput(*jobs: WrkJob) -> list[Throughput]:
    """Closed-loop throughput of each job (side by side): wrk, or Python without it."""
    if wrk_available():
        return run_wrk(*jobs)
    return run_async(_python_jobs(jobs))


async def _python_jobs(jobs: tuple[WrkJob, ...]) -> list[Throughput]:
    async def one(job: WrkJob) -> Throughput:
        host, port = _host_port(job.url)
        paths = session_paths(job.prefix, job.query)
        started = time.monotonic()
        result = await closed_loop(host, port, paths, connections=job.connections,
                                   seconds=job.seconds)  # fmt: skip
        return python_throughput(result, time.monotonic() - started, job.expect)

    return list(await asyncio.gather(*(one(job) for job in jobs)))


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    return host, int(port)


def unique_prefix(name: str) -> str:
    """A session id prefix no earlier run of the benchmark used."""
    return f"{name}-{os.getpid()}-{time.time_ns() // 1_000_000 % 10**9}"
