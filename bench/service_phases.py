"""The phases of the service benchmark, each on its own servers. Every leasegate server
starts on an emptied Redis (FLUSHALL while no server runs; the script cache stays), so no
measurement carries the sessions an earlier one left for the sweeper."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import loadgen, procs
from bench import profile as profiler
from bench.at_rest import measure_at_rest
from bench.loadgen import Latencies, Throughput, WrkJob
from bench.machine import CpuMeter
from bench.monitor import Monitor
from bench.procs import Server
from bench.redis_cost import Probe, loaded_scripts, script_names
from bench.scenarios import SLOW, measure_contention, measure_cost, measure_held_queue, measure_stop
from bench.service_data import (
    EXPECT,
    KINDS,
    LATENCY_WORKERS,
    QUERY,
    WORKER_COUNTS,
    Config,
    Results,
    Windows,
)


@dataclass(frozen=True)
class Bench:
    """What every phase needs: the settings, the Redis, where logs go."""

    config: Config
    redis_url: str
    probe: Probe
    redis_pid: int
    logs: Path
    profile: bool

    def spec(self, name: str, factory: str, workers: int, **settings: str) -> procs.ServerSpec:
        env = procs.leasegate_env(self.redis_url, **settings)
        return procs.ServerSpec(name, factory, workers, env)

    def leasegate(self, name: str, workers: int, **settings: str) -> procs.ServerSpec:
        """A leasegate server, to be started on an emptied Redis."""
        self.probe.flush()
        return self.spec(name, procs.LEASEGATE, workers, **settings)


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


def windows(bench: Bench, server: Server, name: str, kind: str = "admission") -> Windows:
    """A warm-up, then `rounds` consecutive windows."""
    config, query, expect = bench.config, QUERY[kind], EXPECT[kind]
    loadgen.throughput(*_jobs([server], name, query, expect, config.warmup, config.connections))
    meter = CpuMeter.begin(server.worker_pids(), bench.redis_pid)
    measured: list[Throughput] = []
    for _ in range(config.rounds):
        jobs = _jobs([server], name, query, expect, config.window, config.connections)
        measured.extend(loadgen.throughput(*jobs))
        last = measured[-1]
        print(f"  {name}: {last.rate:,.0f}/s (p99 {last.p99_ms:.0f} ms, {last.other} other)",
              flush=True)  # fmt: skip
    return Windows(measured, meter.end())


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


LEARNING = {"lease_ttl_seconds": "1.5", "sweep_interval_seconds": "1"}
"""The scripts server's settings: a heartbeat and a sweep happen within a second or two."""


def scripts_phase(bench: Bench, results: Results) -> None:
    """Start leasegate once under MONITOR, on a Redis whose script cache is still empty,
    to learn its scripts' names from the sources it loads (at start-up, or at first use:
    a `?wait` message, a slow run held through a heartbeat and a sweep, a stop); and see
    that it serves."""
    monitor = Monitor("127.0.0.1", bench.probe.port).start()
    spec = bench.leasegate("leasegate-scripts", 1, **LEARNING)
    try:
        with procs.servers(spec, logs=bench.logs) as [server]:
            print("leasegate, first start: its scripts", flush=True)
            with httpx.Client(base_url=server.url, timeout=15) as client:
                sent = client.post("/v1/sessions/scripts-1/messages?wait=10", json={"text": "hi"})
                sent.raise_for_status()
                client.post("/v1/sessions/scripts-2/messages", json=SLOW).raise_for_status()
                time.sleep(2.0)
                client.post("/v1/sessions/scripts-2/stop").raise_for_status()
    finally:
        lines = monitor.stop()
    results.scripts = script_names(loaded_scripts(lines))
    print(f"  {len(results.scripts)} scripts named", flush=True)


def bare_phase(bench: Bench, results: Results) -> None:
    for workers in WORKER_COUNTS:
        spec = bench.spec(f"bare-{workers}", procs.BARE, workers)
        with procs.servers(spec, logs=bench.logs) as [bare]:
            print(f"bare endpoint, {workers} worker(s)", flush=True)
            results.throughput["bare", workers, "admission"] = windows(bench, bare, spec.name)
            if workers == LATENCY_WORKERS:
                results.latency["bare"] = fixed_rate(bench, bare, "bare-rate")
                results.profiles["bare"] = profiled(bench, bare, "bare-profile")


def naive_phase(bench: Bench, results: Results) -> None:
    for workers in WORKER_COUNTS:
        spec = bench.spec(f"naive-{workers}", procs.NAIVE, workers)
        with procs.servers(spec, logs=bench.logs) as [naive]:
            print(f"naive gateway, {workers} worker(s)", flush=True)
            for kind in KINDS:
                name = f"{spec.name}-{kind}"
                results.throughput["naive", workers, kind] = windows(bench, naive, name, kind)
            if workers == LATENCY_WORKERS:
                results.latency["naive"] = fixed_rate(bench, naive, "naive-rate")


def leasegate_phase(bench: Bench, results: Results) -> None:
    """A fresh server on an emptied Redis for each figure."""
    for workers in WORKER_COUNTS:
        for kind in KINDS:
            name = f"leasegate-{workers}-{kind}"
            with procs.servers(bench.leasegate(name, workers), logs=bench.logs) as [server]:
                print(f"leasegate, {workers} worker(s), {kind.replace('_', ' ')}", flush=True)
                results.throughput["leasegate", workers, kind] = windows(bench, server, name, kind)
                if workers == LATENCY_WORKERS and kind == "admission":
                    results.profiles["leasegate"] = profiled(bench, server, "profile")
    spec = bench.leasegate("leasegate-rate", LATENCY_WORKERS)
    with procs.servers(spec, logs=bench.logs) as [server]:
        print(f"leasegate, {LATENCY_WORKERS} workers, fixed rate", flush=True)
        results.latency["leasegate"] = fixed_rate(bench, server, "rate")


def cost_and_stop_phase(bench: Bench, results: Results) -> None:
    config = bench.config
    with procs.servers(bench.leasegate("leasegate-a", 2), logs=bench.logs) as [a]:
        print("leasegate, 2 workers: Redis cost per message", flush=True)
        results.cost = measure_cost(a, bench.probe, loadgen.unique_prefix("cost"),
                                    results.scripts, messages=config.cost_messages,
                                    sample=config.monitor_messages,
                                    idle=config.idle_seconds)  # fmt: skip
        waited = results.cost.waited
        trips, commands = waited.median(waited.round_trips), waited.median(waited.commands)
        print(f"  ?wait message: {trips:.0f} round trips, {commands:.0f} commands in the "
              "request path", flush=True)  # fmt: skip
        other = bench.spec("leasegate-b", procs.LEASEGATE, 2)  # the same Redis, not emptied
        with procs.servers(other, logs=bench.logs) as [b]:
            print("  stop latency across processes", flush=True)
            prefix = loadgen.unique_prefix("stop")
            results.stop = measure_stop(a, b, prefix, config.stop_repetitions)


def contention_phase(bench: Bench, results: Results) -> None:
    config = bench.config
    spec = bench.leasegate("leasegate-contention", config.contention_workers,
                           queue_cap=str(config.contention_queue_cap))  # fmt: skip
    with procs.servers(spec, logs=bench.logs) as [server]:
        print(f"leasegate, {config.contention_workers} workers: contention, one session",
              flush=True)  # fmt: skip
        results.contention = measure_contention(
            server, bench.probe, loadgen.unique_prefix("contention"),
            config.contention_messages, config.contention_connections,
        )  # fmt: skip
        print("  admission cost by queue length: one poster, the queue held", flush=True)
        # positions 1..N-1 behind the slow run: the same buckets as the burst's 0..N-1
        held = config.contention_messages - 1
        results.held_queue = measure_held_queue(server, loadgen.unique_prefix("held"), held)


def at_rest_phase(bench: Bench, results: Results) -> None:
    config = bench.config
    spec = bench.leasegate("leasegate-at-rest", config.at_rest_workers)
    with procs.servers(spec, logs=bench.logs) as [server]:
        print(f"leasegate, {config.at_rest_workers} workers: cost at rest", flush=True)
        results.at_rest = measure_at_rest(
            server, bench.probe, bench.redis_pid, loadgen.unique_prefix("rest"),
            counts=config.at_rest_counts, seconds=config.at_rest_seconds,
            monitor_seconds=config.at_rest_monitor_seconds,
            interval=config.heartbeat_interval, posters=config.at_rest_posters,
            scripts=results.scripts,
        )  # fmt: skip
    if results.at_rest.failure is not None:
        results.problems.append(f"cost at rest: {results.at_rest.failure}")


PHASES: list[Callable[[Bench, Results], None]] = [
    scripts_phase,
    bare_phase,
    naive_phase,
    leasegate_phase,
    cost_and_stop_phase,
    contention_phase,
    at_rest_phase,
]
