"""The "## Service" section of docs/benchmarks.md (and its chart, bench/service_chart.py)."""

from __future__ import annotations

import os
from pathlib import Path

from bench import agui
from bench.machine import CpuSplit
from bench.report import write_section
from bench.service_chart import chart
from bench.service_data import LATENCY_WORKERS, Results
from bench.service_tables import (
    at_rest_table,
    contention_tables,
    cost_tables,
    cpu_table,
    latency_note,
    latency_table,
    profile_table,
    sequence_text,
    stop_table,
    throughput_table,
)
from bench.service_targets import AT_REST_JUDGED_FROM, targets_table

SECTION = "## Service"


def _busy_cores(cpu: CpuSplit) -> float:
    return cpu.workers + cpu.redis + cpu.load + cpu.kernel + cpu.others


def findings(results: Results) -> str:
    """What the numbers say, in sentences computed from them."""
    notes = []
    measured = [results.windows(g, 2, "end_to_end") for g in ("leasegate", "naive", "bare")]
    cpu = [w.cpu_ms if w is not None else None for w in measured]
    split = measured[0].cpu if measured[0] is not None else None
    if split is not None and all(cpu):
        ours, naive, bare = (value or 0.0 for value in cpu)
        busy = _busy_cores(split)
        notes.append(f"With 2 workers, leasegate's workers spend {ours:.2f} ms of CPU per "
                     f"completed `?wait` message against {naive:.2f} ms for the naive gateway "
                     f"and {bare:.2f} ms for the bare endpoint's 202, with {busy:.1f} of "
                     f"{os.cpu_count()} cores busy during its windows.")  # fmt: skip
    if results.cost is not None:
        sample = results.cost.waited
        notes.append(f"Redis: {sample.median(sample.round_trips):.0f} round trips and "
                     f"{sample.median(sample.commands):.0f} commands in a `?wait` message's "
                     "request path.")  # fmt: skip
    notes.extend(_at_rest_findings(results))
    profile = results.profiles.get("leasegate")
    if profile is not None and profile.by_package:
        top = ", ".join(f"{name} {share:.0%}" for name, share in profile.by_package[:4])
        notes.append(f"A leasegate worker's busy samples under admission load: {top}.")
    return " ".join(notes)


def _at_rest_findings(results: Results) -> list[str]:
    at_rest = results.at_rest
    if at_rest is None or not at_rest.steps:
        return []
    largest = max(at_rest.steps, key=lambda step: step.runs)
    if not largest.runs:
        return []
    sample = largest.sample
    return [f"At rest with {largest.runs:,} runs in flight, Redis sees "
            f"{largest.round_trips_per_s:,.0f} round trips/s (MONITOR: heartbeat renewals "
            f"{sample.heartbeat:,.0f}/s, the sweeper {sample.sweeper:,.1f}/s) and the workers use "
            f"{largest.worker_ms_per_s:,.0f} ms of CPU per second."]  # fmt: skip


def _echo_elsewhere(results: Results) -> tuple[float, float] | None:
    """Worker CPU ms per end-to-end `?wait` message and its rate, throughput phase."""
    measured = results.windows("leasegate", 2, "end_to_end")
    if measured is None or measured.cpu_ms is None:
        return None
    return measured.cpu_ms, measured.rate


def method(results: Results) -> str:
    config = results.config
    tool = (
        "wrk (one thread, a Lua script giving each request its own session id and "
        "counting the answers with the expected status)"
        if results.tool == "wrk"
        else "the Python closed-loop generator (wrk was not installed: the generator shares "
        "the CPUs and caps the numbers)"
    )
    counts = ", ".join(f"{count:,}" for count in config.at_rest_counts)
    return (
        "Three servers, each a real `uvicorn --factory ... --workers N` process (access log "
        "on, output to a file): leasegate; the naive in-process gateway (`bench/naive.py`: "
        "the design leasegate replaces, per worker process only — sessions, queues and runs "
        "in memory, the same echo agent, no Redis; its flaw is that two workers do not share "
        "sessions, which distinct sessions per message do not show); the bare endpoint "
        "(`bench/bare.py`: validates the same pydantic body and answers 202, ignoring "
        "`?wait`, so its one figure stands for both kinds). Every leasegate server starts "
        "on an emptied Redis (FLUSHALL while none runs), so no figure carries the sessions "
        "an earlier one left to the sweeper. "
        f"Throughput: {tool}, {config.connections} keep-alive connections, a "
        f"{config.warmup:g} s warm-up, then {config.rounds} consecutive {config.window:g} s "
        "windows; the median window. The later windows also carry the sweeper, which visits "
        "every session admitted in the last 2 lease TTLs each sweep interval (5 s). "
        f"Latency: an open-loop Python generator sends {config.rate:g} req/s of `?wait=10` "
        f"for {config.rate_seconds:g} s on a fixed schedule to a {LATENCY_WORKERS}-worker "
        "server and measures from each request's scheduled send time. Everything — "
        "redis-server (append-only off), the servers and the load generator — shares the "
        "machine's CPUs; nothing is pinned. Redis cost: a round trip is a batch of commands "
        "a client sent together, seen with MONITOR (INFO's socket reads, "
        "`total_reads_processed`, are shown beside it); the MONITOR samples send one message "
        "at a time with ECHO markers before each message and after its response, the "
        "sweeper's commands left out, and report their median message. Contention: "
        f"{config.contention_messages:,} messages to one session over "
        f"{config.contention_connections} connections, {config.contention_workers} workers, "
        f"`LEASEGATE_QUEUE_CAP={config.contention_queue_cap}`; drain = runs / (last "
        "`finished_at` - first `started_at`). Stop: a run with `delay_ms` 600000 admitted by "
        "one 2-worker process and stopped by `POST .../stop` to another, "
        f"{config.stop_repetitions} times. Cost at rest: one {config.at_rest_workers}-worker "
        f"server, lease TTL {config.lease_ttl:g} s (the default; heartbeat every "
        f"{config.heartbeat_interval:.2f} s); N = {counts} sessions each with one run of "
        f"`delay_ms` 600000, posted {config.at_rest_posters} at a time and kept from step to "
        f"step; one heartbeat interval after the last post, a window of "
        f"{config.at_rest_intervals} heartbeat intervals ({config.at_rest_seconds:.1f} s) "
        "with a MONITOR (a pipeline is one round trip however many 16 KiB reads it took; "
        "heartbeat renewals told from the sweeper), INFO counters and per-thread CPU "
        "(schedstat); all sessions stopped at the end. Round trips per worker per 100 held "
        "leases per interval = round trips/s * interval / workers / (N / 100), judged "
        f"at N ≥ {AT_REST_JUDGED_FROM:,} where the sweeper's fixed cost weighs little; per-run "
        "CPU above the idle baseline = (worker CPU at N - at N = 0) / N. The profile: py-spy "
        f"(250 Hz, busy samples only) on one worker during an extra {config.profile_seconds:g}"
        " s admission window, innermost frame grouped by package. "
        + agui.method(config.agui_connections, config.warmup, config.agui_window)
    )


def section(results: Results, machine: str, date: str, code: str) -> str:
    parts = [
        f"- Machine: {machine}\n- Code: {code}\n- Date: {date}",
        "![service benchmark](benchmarks.png)",
        "### Targets\n\n" + targets_table(results) + "\n" + findings(results),
        "### Throughput and latency\n\n" + throughput_table(results) + "\n" + cpu_table(results),
    ]
    if results.latency:
        parts.append(latency_table(results))
    if "leasegate" in results.latency:
        parts.append(latency_note(results.latency["leasegate"]))
    if results.agui is not None and results.agui.legs:
        parts.append("### An AG-UI agent, direct and through leasegate\n\n"
                     + agui.agui_table(results.agui) + "\n"
                     + agui.agui_text(results.agui, _echo_elsewhere(results)))  # fmt: skip
    if results.cost is not None:
        parts.append("### Redis cost per message\n\n"
                     + cost_tables(results.cost, results.contention) + "\n"
                     + sequence_text(results.cost))  # fmt: skip
    if results.at_rest is not None:
        parts.append("### Cost at rest as work grows\n\n" + at_rest_table(results.at_rest))
    if results.contention is not None:
        workers = results.config.contention_workers
        parts.append(f"### Contention: one session, {workers} workers\n\n"
                     + contention_tables(results.contention, results.held_queue,
                                         results.config))  # fmt: skip
    if results.stop is not None:
        parts.append("### Stop across processes\n\n" + stop_table(results.stop))
    if (profile := profile_table(results.profiles)) != "":
        parts.append("### Where a worker's time goes\n\n" + profile)
    if results.problems:
        parts.append(
            "### Problems during the run\n\n" + "\n".join(f"- {p}" for p in results.problems)
        )
    parts.append("### Method\n\n" + method(results))
    return "\n\n".join(part.rstrip("\n") for part in parts)


def write(results: Results, body: str) -> list[Path]:
    return [write_section(SECTION, body), chart(results)]
