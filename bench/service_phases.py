"""The phases of the service benchmark, each on its own servers. Every leasegate server
starts on an emptied Redis (FLUSHALL while no server runs; the script cache stays), so no
measurement carries the sessions an earlier one left for the sweeper; each one's scripts
are learned while it starts, to name them in the MONITOR samples."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import agui, loadgen, procs
from bench import profile as profiler
from bench.agui_agent import PATH as AGUI_PATH
from bench.at_rest import measure_at_rest
from bench.loadgen import Latencies, Throughput, WrkJob
from bench.machine import CpuMeter
from bench.monitor import Monitor
from bench.procs import Server
from bench.redis_cost import Probe, loaded_scripts, script_names
from bench.scenarios import measure_contention, measure_cost, measure_held_queue, measure_stop
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
    """What every phase needs: the settings, the Redis, where logs go, and the sources of
    the Lua scripts leasegate servers have loaded (sha1 -> source)."""

    config: Config
    redis_url: str
    probe: Probe
    redis_pid: int
    logs: Path
    profile: bool
    sources: dict[str, str] = field(default_factory=dict)

    def spec(self, name: str, factory: str, workers: int, **settings: str) -> procs.ServerSpec:
        env = procs.leasegate_env(self.redis_url, **settings)
        return procs.ServerSpec(name, factory, workers, env)

    def learn(self, monitor_lines: list[str]) -> None:
        self.sources.update(loaded_scripts(monitor_lines))

    def names(self) -> dict[str, str]:
        """sha1 -> name of every script seen so far (for EVALSHA in MONITOR samples)."""
        return script_names(self.sources)


@contextmanager
def leasegate(
    bench: Bench, name: str, workers: int, *, empty: bool = True, **settings: str
) -> Iterator[Server]:
    """A leasegate server, on an emptied Redis unless `empty` is False (FLUSHALL: only
    while no other server runs; the script cache stays). A MONITOR runs while it starts:
    its scripts' texts depend on its settings (constants are baked in), and it loads them
    into Redis' script cache then, unless an earlier server with the same settings did."""
    if empty:
        bench.probe.flush()
    spec = bench.spec(name, procs.LEASEGATE, workers, **settings)
    with ExitStack() as stack:
        monitor = Monitor("127.0.0.1", bench.probe.port).start()
        try:
            [server] = stack.enter_context(procs.servers(spec, logs=bench.logs))
        finally:
            bench.learn(monitor.stop())
        yield server


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
            with leasegate(bench, name, workers) as server:
                print(f"leasegate, {workers} worker(s), {kind.replace('_', ' ')}", flush=True)
                results.throughput["leasegate", workers, kind] = windows(bench, server, name, kind)
                if workers == LATENCY_WORKERS and kind == "admission":
                    results.profiles["leasegate"] = profiled(bench, server, "profile")
    with leasegate(bench, "leasegate-rate", LATENCY_WORKERS) as server:
        print(f"leasegate, {LATENCY_WORKERS} workers, fixed rate", flush=True)
        results.latency["leasegate"] = fixed_rate(bench, server, "rate")


def agui_phase(bench: Bench, results: Results) -> None:
    """An AG-UI agent called directly, then through 2-worker leasegate servers (one fresh
    server on an emptied Redis per leg, so no leg carries the sessions an earlier one left
    to the sweeper): to the AG-UI agent, to the echo agent paced at the AG-UI leg's rate
    (the hop's cost is judged against it), to the echo agent closed loop (bench/agui.py)."""
    config = bench.config
    load = agui.Load(config.agui_connections, config.warmup, config.agui_window)
    result = results.agui = agui.AguiResult(config.agui_connections, config.agui_window)
    spec = procs.ServerSpec("agui-agent", procs.AGUI_AGENT, 1, procs.agent_env())
    with procs.servers(spec, logs=bench.logs) as [agent]:
        print(f"AG-UI agent, {config.agui_connections} at once: direct", flush=True)
        result.legs["direct"] = leg = agui.direct_leg(agent, AGUI_PATH, bench.redis_pid,
                                                      load)  # fmt: skip
        print(agui.describe(leg), flush=True)
        agents = bench.logs / "agui-agents.toml"
        agents.write_text(agui.agents_file(agent.url + AGUI_PATH))
        for name in ("agui", "paced", "echo"):
            with leasegate(bench, f"leasegate-agui-{name}", LATENCY_WORKERS,
                           agents_file=str(agents)) as server:  # fmt: skip
                print(f"leasegate, {LATENCY_WORKERS} workers: {agui.LABELS[name]}", flush=True)
                if name == "paced":
                    rate = result.legs["agui"].rate if "agui" in result.legs else 0.0
                    if rate <= 0:
                        continue
                    leg = agui.paced_leg(server, bench.redis_pid, rate, load)
                else:
                    agent_id = agui.AGUI_AGENT_ID if name == "agui" else agui.ECHO_AGENT_ID
                    leg = agui.leasegate_leg(name, server, agent, agent_id, bench.redis_pid,
                                             load)  # fmt: skip
                result.legs[name] = leg
                print(agui.describe(leg), flush=True)
        if result.hop_ms is not None:
            print(f"  the hop: {result.hop_ms:.2f} ms of worker CPU per run", flush=True)


def cost_and_stop_phase(bench: Bench, results: Results) -> None:
    config = bench.config
    with leasegate(bench, "leasegate-a", 2) as a:
        print("leasegate, 2 workers: Redis cost per message", flush=True)
        results.cost = measure_cost(a, bench.probe, loadgen.unique_prefix("cost"),
                                    bench.names(), messages=config.cost_messages,
                                    sample=config.monitor_messages,
                                    idle=config.idle_seconds)  # fmt: skip
        waited = results.cost.waited
        trips, commands = waited.median(waited.round_trips), waited.median(waited.commands)
        print(f"  ?wait message: {trips:.0f} round trips, {commands:.0f} commands in the "
              "request path", flush=True)  # fmt: skip
        with leasegate(bench, "leasegate-b", 2, empty=False) as b:
            print("  stop latency across processes", flush=True)
            prefix = loadgen.unique_prefix("stop")
            results.stop = measure_stop(a, b, prefix, config.stop_repetitions)


def contention_phase(bench: Bench, results: Results) -> None:
    config = bench.config
    cap = str(config.contention_queue_cap)
    with leasegate(bench, "leasegate-contention", config.contention_workers,
                   queue_cap=cap) as server:  # fmt: skip
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
    with leasegate(bench, "leasegate-at-rest", config.at_rest_workers) as server:
        print(f"leasegate, {config.at_rest_workers} workers: cost at rest", flush=True)
        results.at_rest = measure_at_rest(
            server, bench.probe, bench.redis_pid, loadgen.unique_prefix("rest"),
            counts=config.at_rest_counts, seconds=config.at_rest_seconds,
            interval=config.heartbeat_interval, posters=config.at_rest_posters,
            scripts=bench.names(),
        )  # fmt: skip
    if results.at_rest.failure is not None:
        results.problems.append(f"cost at rest: {results.at_rest.failure}")


PHASES: list[Callable[[Bench, Results], None]] = [
    bare_phase,
    naive_phase,
    leasegate_phase,
    agui_phase,
    cost_and_stop_phase,
    contention_phase,
    at_rest_phase,
]
