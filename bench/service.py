"""Service benchmark: leasegate as deployed (uvicorn workers on one Redis) against a bare
FastAPI endpoint that only validates the same body.

Run `python -m bench.service` (or `make bench`); `--quick` is a short smoke run that
writes nothing. One redis-server (append-only off) is started for the whole run, and
every server under test is a real `uvicorn --factory ... --workers N` process:

1. admission throughput, 2 workers, distinct sessions, against the bare endpoint;
2. end to end: completed `?wait=10` messages/s, and p50/p99 latency at a fixed rate
   (open loop) for leasegate and the bare endpoint;
3. contention: 1,000 messages posted at once to one session on 4 workers;
4. stop latency: a run held by one process, stopped through another;
5. Redis commands, round trips and memory per message;
6. scaling: 1, 2 and 4 workers, and two processes of 2 workers.

The results go to the "## Service" section of docs/benchmarks.md and to
docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.redis.server import RedisServer
from bench import loadgen, procs, service_report
from bench import profile as profiler
from bench.loadgen import Latencies, Throughput, WrkJob
from bench.machine import CpuAccount, CpuMeter, code_version, machine_line
from bench.procs import Server
from bench.redis_cost import Probe
from bench.scenarios import (
    measure_contention,
    measure_cost,
    measure_held_queue,
    measure_stop,
    settle,
)
from bench.service_data import QUICK, SCALING, Config, Results, Windows


@dataclass(frozen=True)
class Bench:
    """What every phase needs: the settings, the Redis, where logs go."""

    config: Config
    redis_url: str
    probe: Probe
    redis_pid: int
    logs: Path
    profile: bool

    def leasegate(self, name: str, workers: int, **settings: str) -> procs.ServerSpec:
        return procs.ServerSpec(
            name, procs.LEASEGATE, workers, procs.leasegate_env(self.redis_url, **settings)
        )


# --- throughput -------------------------------------------------------------------------


def _jobs(
    servers: list[Server], name: str, query: str, expect: int, seconds: float, connections: int
) -> list[WrkJob]:
    """One job per server, the connections split between them."""
    share = max(1, connections // len(servers))
    prefix = loadgen.unique_prefix(name)
    return [
        WrkJob(server.url, f"{prefix}-{n}", query, expect, share, seconds)
        for n, server in enumerate(servers)
    ]


def windows(
    bench: Bench,
    servers: list[Server],
    name: str,
    *,
    query: str = "",
    expect: int = 202,
    rounds: int | None = None,
) -> Windows:
    """A warm-up, then `rounds` consecutive windows; the rates of side-by-side servers add."""
    config = bench.config
    loadgen.throughput(*_jobs(servers, name, query, expect, config.warmup, config.connections))
    workers = [pid for server in servers for pid in server.worker_pids()]
    meter = CpuMeter.begin(workers, bench.redis_pid)
    measured = []
    for _ in range(rounds or config.rounds):
        jobs = _jobs(servers, name, query, expect, config.window, config.connections)
        parts = loadgen.throughput(*jobs)
        measured.append(_sum(parts))
        print(
            f"  {name}: {measured[-1].rate:,.0f}/s (p99 {measured[-1].p99_ms:.0f} ms)", flush=True
        )
    return Windows(measured, meter.end())


def _sum(parts: list[Throughput]) -> Throughput:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def settled(bench: Bench, measured: Windows, name: str) -> Windows:
    seconds = settle(bench.probe)
    print(f"  {name}: sessions swept from the index in {seconds:.0f} s", flush=True)
    return dataclasses.replace(measured, settle_seconds=seconds)


def fixed_rate(bench: Bench, server: Server, name: str) -> Latencies:
    config = bench.config
    paths = loadgen.session_paths(loadgen.unique_prefix(name), "?wait=10")
    result = loadgen.run_async(
        loadgen.open_loop(
            "127.0.0.1", server.port, paths, rate=config.rate, seconds=config.rate_seconds
        )
    )
    print(f"  {name}: p50 {result.ms(50):.1f} ms, p99 {result.ms(99):.1f} ms", flush=True)
    return result


def profiled(bench: Bench, server: Server, name: str) -> profiler.Profile | None:
    """py-spy on one worker during an extra admission window (skipped without py-spy)."""
    pids, spy = server.worker_pids(), profiler.executable()
    if not bench.profile or spy is None or not pids:
        return None
    seconds = bench.config.profile_seconds
    process, output = profiler.start(spy, pids[0], seconds)
    loadgen.throughput(*_jobs([server], name, "", 202, seconds + 1, bench.config.connections))
    return profiler.finish(process, output)


# --- phases -----------------------------------------------------------------------------


def bare_phase(bench: Bench, results: Results) -> None:
    spec = procs.ServerSpec("bare", procs.BARE, 2, procs.leasegate_env(bench.redis_url))
    with procs.servers(spec, logs=bench.logs) as [bare]:
        print("bare endpoint, 2 workers", flush=True)
        results.bare = windows(bench, [bare], "bare")
        results.bare_latency = fixed_rate(bench, bare, "bare-rate")
        results.profiles["bare"] = profiled(bench, bare, "bare-profile")


def two_worker_phase(bench: Bench, results: Results) -> None:
    """One 2-worker server; a second one joins for the stop and two-process measurements."""
    with procs.servers(bench.leasegate("leasegate-a", 2), logs=bench.logs) as [a]:
        print("leasegate, 2 workers", flush=True)
        admission = windows(bench, [a], "admission")
        results.profiles["leasegate"] = profiled(bench, a, "profile")  # settled with them
        results.admission = settled(bench, admission, "admission")
        results.scaling[SCALING[1]] = results.admission.windows[0]
        end_to_end = windows(bench, [a], "end-to-end", query="?wait=10", expect=200)
        results.end_to_end = settled(bench, end_to_end, "end-to-end")
        results.latency = fixed_rate(bench, a, "rate")
        settle(bench.probe)
        results.cost = measure_cost(a, bench.probe, loadgen.unique_prefix("cost"),
                                    messages=bench.config.cost_messages,
                                    sample=bench.config.monitor_messages,
                                    idle=bench.config.idle_seconds)  # fmt: skip
        with procs.servers(bench.leasegate("leasegate-b", 2), logs=bench.logs) as [b]:
            _stop_and_two_processes(bench, results, a, b)


def _stop_and_two_processes(bench: Bench, results: Results, a: Server, b: Server) -> None:
    print("  stop latency across processes", flush=True)
    prefix = loadgen.unique_prefix("stop")
    results.stop = measure_stop(a, b, prefix, bench.config.stop_repetitions)
    two = settled(bench, windows(bench, [a, b], "two-processes", rounds=1), "two-processes")
    results.scaling[SCALING[3]] = two.median


def one_worker_phase(bench: Bench, results: Results) -> None:
    with procs.servers(bench.leasegate("leasegate-1", 1), logs=bench.logs) as [server]:
        print("leasegate, 1 worker", flush=True)
        measured = settled(bench, windows(bench, [server], "one-worker", rounds=1), "one-worker")
        results.scaling[SCALING[0]] = measured.median


def four_worker_phase(bench: Bench, results: Results) -> None:
    config = bench.config
    spec = bench.leasegate("leasegate-4", 4, queue_cap=str(config.contention_queue_cap))
    with procs.servers(spec, logs=bench.logs) as [server]:
        print("leasegate, 4 workers", flush=True)
        measured = settled(bench, windows(bench, [server], "four-workers", rounds=1), "4 workers")
        results.scaling[SCALING[2]] = measured.median
        print("  contention: one session", flush=True)
        results.contention = measure_contention(
            server, bench.probe, loadgen.unique_prefix("contention"),
            config.contention_messages, config.contention_connections,
        )  # fmt: skip
        print("  admission cost by queue length: one poster, the queue held", flush=True)
        prefix = loadgen.unique_prefix("held")
        # positions 1..N-1 behind the slow run: the same buckets as the burst's 0..N-1
        held = config.contention_messages - 1
        results.held_queue = measure_held_queue(server, prefix, held)


PHASES: list[Callable[[Bench, Results], None]] = [
    bare_phase,
    two_worker_phase,
    one_worker_phase,
    four_worker_phase,
]


# --- main -------------------------------------------------------------------------------


@contextmanager
def redis_for_bench(folder: Path) -> Iterator[RedisServer]:
    server = RedisServer(folder / "redis", appendonly=False).start()
    try:
        yield server
    finally:
        server.stop()


def run(config: Config, profile: bool) -> tuple[Results, str]:
    tool = "wrk" if loadgen.wrk_available() else "python"
    results = Results(config, tool)
    with (
        tempfile.TemporaryDirectory(prefix="leasegate-bench-") as folder,
        redis_for_bench(Path(folder)) as redis_server,
    ):
        probe = Probe(redis_server.url)
        try:
            bench = Bench(config, redis_server.url, probe, probe.pid(), Path(folder), profile)
            for phase in PHASES:
                phase(bench, results)
            version = probe.version()
        finally:
            probe.close()
    results.problems.extend(procs.STOP_PROBLEMS)
    return results, version


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    args = parser.parse_args(argv)

    code = code_version()
    account = CpuAccount.start()
    started = time.perf_counter()
    config = QUICK if args.quick else Config()
    results, redis_version = run(config, profile=not args.no_profile)
    cpu = account.finish()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if (code_after := code_version()) != code:
        print(f"warning: the code changed during the run ({code} -> {code_after})")
        code = f"{code}, changed during the run to {code_after}"
    body = service_report.section(results, machine_line(redis_version, cpu), date, code)
    print(f"\n{service_report.SECTION}\n\n{body}\n")
    if not args.quick:
        written = service_report.write(results, body)
        print(f"written to {', '.join(map(str, written))}")
    print(f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
