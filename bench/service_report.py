"""The "## Service" section of docs/benchmarks.md and the chart docs/benchmarks.png."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.loadgen import Latencies, Sample, percentile
from bench.machine import CpuSplit
from bench.profile import Profile
from bench.report import BENCHMARKS_MD, markdown_table, write_section
from bench.scenarios import Contention, Cost, HeldQueue, StopLatency
from bench.service_data import SCALING, Config, Results, Windows

if TYPE_CHECKING:
    from matplotlib.axes import Axes

SECTION = "## Service"
CHART = BENCHMARKS_MD.with_name("benchmarks.png")

ADMISSION_RATIO_TARGET = 0.7
P99_MARGIN_TARGET_MS = 5.0
ROUND_TRIPS_TARGET = 4.0
POSITION_BUCKET = 200


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _verdict(met: bool, detail: str) -> str:
    return f"{'met' if met else 'missed'}, {detail}"


# --- targets ----------------------------------------------------------------------------


def admission_target(results: Results) -> list[str]:
    assert results.admission is not None and results.bare is not None
    ratio = results.admission.rate / results.bare.rate
    gap = ratio - ADMISSION_RATIO_TARGET
    detail = f"{abs(gap):.2f}x {'above' if gap >= 0 else 'below'} the target"
    return [
        f"admission throughput ≥ {ADMISSION_RATIO_TARGET}x the bare endpoint's",
        f"{ratio:.2f}x ({_n(results.admission.rate)} vs {_n(results.bare.rate)} req/s)",
        _verdict(gap >= 0, detail),
    ]


def latency_target(results: Results) -> list[str]:
    assert results.latency is not None and results.bare_latency is not None
    ours, bare = results.latency.ms(99), results.bare_latency.ms(99)
    spare = P99_MARGIN_TARGET_MS - (ours - bare)
    detail = f"by {abs(spare):.1f} ms" if spare < 0 else f"{spare:.1f} ms to spare"
    return [
        f"p99 of `?wait=10` at {results.config.rate:g} req/s within "
        f"{P99_MARGIN_TARGET_MS:g} ms of the bare endpoint's",
        f"{_ms(ours)} vs {_ms(bare)} ms ({ours - bare:+.1f} ms)",
        _verdict(spare >= 0, detail),
    ]


def round_trip_target(cost: Cost) -> list[str]:
    measured = cost.sample.batches
    spare = ROUND_TRIPS_TARGET - measured
    detail = (f"by {abs(spare):.2f}" if spare < -0.005 else "exactly at the limit"
              if spare < 0.005 else f"{spare:.2f} to spare")  # fmt: skip
    sweeper = (cost.with_sweeper.reads - cost.window.reads) / cost.messages
    return [
        f"≤ {ROUND_TRIPS_TARGET:g} Redis round trips per uncontended message",
        f"{measured:.2f} in the request path (MONITOR); the sweeper adds {sweeper:.1f} per "
        "new session later",
        _verdict(spare >= -0.005, detail),
    ]


def targets(results: Results) -> str:
    assert results.cost is not None
    rows = [admission_target(results), latency_target(results), round_trip_target(results.cost)]
    return markdown_table(["target", "measured", "verdict"], rows)


# --- findings -------------------------------------------------------------------------


def _cpu_per_request(measured: Windows | None) -> float | None:
    if measured is None or measured.cpu is None or measured.rate <= 0:
        return None
    return measured.cpu.workers / measured.rate * 1000


def _busy_cores(cpu: CpuSplit) -> float:
    return cpu.workers + cpu.redis + cpu.load + cpu.kernel + cpu.others


def findings(results: Results) -> str:
    """What the numbers say, in sentences computed from them."""
    notes = []
    ours, bare = _cpu_per_request(results.admission), _cpu_per_request(results.bare)
    if ours is not None and bare is not None and results.admission and results.admission.cpu:
        busy = _busy_cores(results.admission.cpu)
        notes.append(f"Leasegate's workers spend {ours:.2f} ms of CPU per admitted message "
                     f"(its run included) against {bare:.2f} ms for the bare endpoint "
                     f"({ours / bare:.1f}x), with {busy:.1f} of {os.cpu_count()} cores "
                     "busy during the windows.")  # fmt: skip
    if results.admission is not None and len(results.admission.windows) > 1:
        rates = " / ".join(_n(w.rate) for w in results.admission.windows)
        notes.append(f"The back-to-back admission windows ran at {rates} req/s; each later "
                     "one also carries the sweeper's visits to the sessions the earlier ones "
                     "created.")  # fmt: skip
    profile = results.profiles.get("leasegate")
    if profile is not None:
        top = ", ".join(f"{name} {share:.0%}" for name, share in profile.by_package[:4])
        notes.append(f"No single hot spot: a worker's busy samples are spread over {top}.")
    if results.cost is not None:
        cost = results.cost
        sweeper = (cost.with_sweeper.reads - cost.window.reads) / cost.messages
        notes.append(f"Redis: {cost.sample.batches:.0f} round trips per message in the "
                     f"request path, and {sweeper:.1f} more per new session from the sweeper "
                     "afterwards.")  # fmt: skip
    return " ".join(notes)


# --- tables -----------------------------------------------------------------------------


def _windows_text(measured: Windows) -> str:
    return " / ".join(_n(w.rate) for w in measured.windows)


def throughput_table(results: Results) -> str:
    assert results.admission and results.end_to_end and results.bare
    bare = results.bare
    rows = []
    for label, ours in (
        ("admission: `POST .../messages` → 202", results.admission),
        ("end to end: `POST ...?wait=10` → 200 completed", results.end_to_end),
    ):
        rows.append(
            [
                label,
                _n(ours.rate),
                _n(bare.rate),
                f"{ours.rate / bare.rate:.2f}x",
                _ms(ours.median.p99_ms),
                _ms(bare.median.p99_ms),
                _windows_text(ours),
            ]
        )
    header = [
        "2 workers, distinct sessions",
        "leasegate req/s",
        "bare req/s",
        "ratio",
        "leasegate p99 ms",
        "bare p99 ms",
        "leasegate windows req/s",
    ]
    return markdown_table(header, rows)


def cpu_table(results: Results) -> str:
    rows = []
    for name, measured in (("bare, admission", results.bare),
                           ("leasegate, admission", results.admission),
                           ("leasegate, end to end", results.end_to_end)):  # fmt: skip
        if measured is None or measured.cpu is None:
            continue
        cpu = measured.cpu
        per_request = cpu.workers / measured.rate * 1000 if measured.rate else 0.0
        cores = (cpu.workers, cpu.redis, cpu.load, cpu.kernel, cpu.others)
        rows.append([name, _n(measured.rate), *(f"{c:.2f}" for c in cores),
                     f"{per_request:.2f}"])  # fmt: skip
    header = ["cores used during the windows", "req/s", "workers", "redis-server",
              "load generator", "interrupts", "other processes",
              "worker CPU ms per request"]  # fmt: skip
    return markdown_table(header, rows)


def _latency_row(name: str, latencies: Latencies, expect: int) -> list[str]:
    other = len(latencies.samples) - latencies.count(expect)
    return [
        name,
        _n(len(latencies.samples)),
        _ms(latencies.ms(50)),
        _ms(latencies.ms(90)),
        _ms(latencies.ms(99)),
        _ms(latencies.ms(100)),
        str(other),
        str(latencies.late_starts),
    ]


def latency_table(results: Results) -> str:
    assert results.latency is not None and results.bare_latency is not None
    rows = [
        _latency_row("leasegate (200 once the run completed)", results.latency, 200),
        _latency_row("bare endpoint (202)", results.bare_latency, 202),
    ]
    header = [
        "`POST ...?wait=10`, 2 workers",
        "requests",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "other status",
        "sent > 1 ms late",
    ]
    return markdown_table(header, rows)


def slow_bursts(latencies: Latencies, share: float = 0.01, gap: float = 0.5) -> list[float]:
    """When the slowest `share` of the requests were due: the start of each burst of them
    (seconds from the first request; a gap over `gap` s starts a new burst)."""
    samples = latencies.samples
    if not samples:
        return []
    slowest = sorted(samples, key=lambda s: s.latency)[-max(1, round(len(samples) * share)) :]
    origin = min(s.started for s in samples)
    starts: list[float] = []
    previous = None
    for due in sorted(s.started for s in slowest):
        if previous is None or due - previous > gap:
            starts.append(due - origin)
        previous = due
    return starts


def latency_note(results: Results) -> str:
    assert results.latency is not None
    starts = slow_bursts(results.latency)
    count = max(1, round(len(results.latency.samples) * 0.01))
    shown = ", ".join(f"{t:.1f}" for t in starts[:12]) + (", ..." if len(starts) > 12 else "")
    return (
        f"Leasegate's slowest 1% ({count} requests) were due in {len(starts)} burst(s), at "
        f"{shown} s into the run (each worker tries to sweep every 4.5-5 s)."
    )


def contention_tables(contention: Contention, held: HeldQueue | None, config: Config) -> str:
    admission = contention.admission
    statuses = ", ".join(f"{n} x {status}" for status, n in sorted(contention.statuses.items()))
    summary = markdown_table(
        [
            "messages",
            "answers",
            "runs drained",
            "drain runs/s",
            "admission p50 ms",
            "admission p99 ms",
        ],
        [
            [
                _n(config.contention_messages),
                statuses,
                _n(contention.runs),
                _n(contention.runs_per_s),
                _ms(admission.ms(50)),
                _ms(admission.ms(99)),
            ]
        ],
    )
    held_note = (
        f"Burst: the messages above, posted over {config.contention_connections} connections "
        "while the session drains."
    )
    if held is not None:
        held_note += (
            f" One poster: {_n(len(held.positions))} messages posted one after another while "
            "a slow run holds the session, so nothing drains and each lands one place further "
            "back; its latency is the admission's own cost at that queue length."
        )
    return "\n".join([summary, position_table(contention, held), held_note, "",
                      first_last(contention)])  # fmt: skip


def _by_position(samples: list[Sample], positions: list[int]) -> dict[int, Latencies]:
    buckets: dict[int, Latencies] = {}
    for sample, position in zip(samples, positions, strict=True):
        buckets.setdefault(position // POSITION_BUCKET, Latencies()).samples.append(sample)
    return buckets


def position_table(contention: Contention, held: HeldQueue | None) -> str:
    burst = _by_position(contention.admission.samples, contention.positions)
    alone = _by_position(held.admission.samples, held.positions) if held else {}
    rows = []
    for bucket in sorted(set(burst) | set(alone)):
        low = bucket * POSITION_BUCKET
        cells = [f"{low}-{low + POSITION_BUCKET - 1}"]
        for group in (burst.get(bucket), alone.get(bucket)):
            cells += ([_n(len(group.samples)), _ms(group.ms(50)), _ms(group.ms(99))]
                      if group else ["0", "-", "-"])  # fmt: skip
        rows.append(cells)
    header = ["queue position at admission", "burst: admissions", "burst p50 ms",
              "burst p99 ms", "one poster: admissions", "one poster p50 ms",
              "one poster p99 ms"]  # fmt: skip
    return markdown_table(header, rows)


def first_last(contention: Contention, count: int = 100) -> str:
    ordered = sorted(contention.admission.samples, key=lambda s: s.started)
    first, last = Latencies(ordered[:count]), Latencies(ordered[-count:])
    return (
        f"Burst: the first {count} admissions sent: p50 {_ms(first.ms(50))} ms, p99 "
        f"{_ms(first.ms(99))} ms; the last {count}: p50 {_ms(last.ms(50))} ms, p99 "
        f"{_ms(last.ms(99))} ms (deepest queue position {max(contention.positions, default=0)})."
    )


def stop_table(stop: StopLatency) -> str:
    def row(name: str, values: list[float]) -> list[str]:
        cells = [percentile(values, pct) for pct in (50, 99, 100)]
        return [name, _n(len(values)), *(_ms(cell) for cell in cells)]

    rows = [
        row("stop request sent → run's `finished_at`", stop.to_finished_ms),
        row("the stop request's round trip", stop.request_ms),
    ]
    table = markdown_table(
        ["other process than the holder", "runs", "p50 ms", "p99 ms", "max ms"], rows
    )
    if stop.failures:
        table += f"\n{stop.failures} repetition(s) did not end `cancelled` and are left out.\n"
    return table


def cost_tables(cost: Cost, contention: Contention | None) -> str:
    n = cost.messages
    window, swept = cost.window, cost.with_sweeper
    rows = [
        [
            "round trips (socket reads), MONITOR sample, one message at a time",
            f"{cost.sample_reads:.2f}",
        ],
        [
            f"round trips (socket reads), {_n(n)} messages over 8 connections",
            f"{window.reads / n:.2f}",
        ],
        [
            "commands executed, scripts' inner commands included (`total_commands_processed`)",
            f"{window.processed / n:.2f}",
        ],
        [
            "the same two, until the sweeper had dropped the sessions from its index",
            f"{swept.reads / n:.2f} round trips, {swept.processed / n:.2f} commands",
        ],
        [
            "memory per idle session with its one completed run (`used_memory`)",
            f"{cost.memory_per_session / 1024:.1f} KiB",
        ],
    ]
    if contention is not None:
        rows.append(
            [
                f"memory per 1,000 runs retained in one session ({_n(contention.runs)} runs)",
                f"{contention.memory_bytes / contention.runs * 1000 / 1024**2:.2f} MiB",
            ]
        )
    summary = markdown_table(["per uncontended message (`?wait=10`, echo agent)", "value"], rows)
    return summary + "\n" + command_table(cost)


def command_table(cost: Cost) -> str:
    sample, calls = cost.sample, cost.window.per(cost.messages)
    names = sorted(
        set(calls)
        | {k.split()[0].lower() for k in sample.top_level}
        | {k.lower() for k in sample.in_scripts},
        key=lambda k: -calls.get(k, 0),
    )
    rows = []
    for name in names:
        sent = {k: v for k, v in sample.top_level.items() if k.split()[0].lower() == name}
        inside = sample.in_scripts.get(name.upper(), 0.0)
        if max(sum(sent.values()), inside, calls.get(name, 0.0)) < 0.005:
            continue  # a stray call or two among thousands: not per message
        detail = ", ".join(f"{k.split(' ', 1)[1]} {v:.2f}" for k, v in sent.items() if " " in k)
        rows.append(
            [
                f"`{name.upper()}`",
                f"{sum(sent.values()):.2f}" + (f" ({detail})" if detail else ""),
                f"{inside:.2f}",
                f"{calls.get(name, 0.0):.2f}",
            ]
        )
    header = [
        "command",
        "sent by a client (MONITOR)",
        "inside scripts (MONITOR)",
        f"all calls ({_n(cost.messages)} messages, commandstats)",
    ]
    return markdown_table(header, rows)


def scaling_table(results: Results) -> str:
    rows = []
    base = results.scaling.get(SCALING[0])
    for name in SCALING:
        if (measured := results.scaling.get(name)) is None:
            continue
        ratio = f"{measured.rate / base.rate:.2f}x" if base else "n/a"
        rows.append([name, _n(measured.rate), ratio, _ms(measured.p99_ms)])
    return markdown_table(["leasegate admission", "req/s", "vs 1 worker", "p99 ms"], rows)


def profile_table(profiles: dict[str, Profile | None]) -> str:
    ours, bare = profiles.get("leasegate"), profiles.get("bare")
    if ours is None:
        return ""
    bare_share = dict(bare.by_package) if bare else {}
    rows = [
        [name, f"{share:.0%}", f"{bare_share[name]:.0%}" if name in bare_share else "-"]
        for name, share in ours.by_package
    ]
    packages = markdown_table(["innermost frame in", "leasegate worker", "bare worker"], rows)
    functions = markdown_table(
        ["leasegate function (inclusive)", "share of samples"],
        [[f"`{name}`", f"{share:.0%}"] for name, share in ours.app_functions],
    )
    return packages + "\n" + functions


# --- the section ------------------------------------------------------------------------


def method(results: Results) -> str:
    config = results.config
    tool = (
        "wrk (one thread, a Lua script giving each request its own session id and "
        "counting the answers with the expected status)"
        if results.tool == "wrk"
        else "the Python closed-loop generator (wrk was not installed: the generator shares "
        "the CPUs and caps the numbers)"
    )
    return (
        f"Throughput: {tool}, {config.connections} keep-alive connections, a "
        f"{config.warmup:g} s warm-up, then {config.rounds} consecutive {config.window:g} s "
        "windows; the median window. The windows follow each other without a pause, so the "
        "later ones also carry the sweeper, which visits every session admitted in the last "
        "2 lease TTLs (20 s) each sweep interval (5 s); before the next measurement the "
        "benchmark waits until the sweeper has dropped them all. wrk is C and needs a "
        "fraction of a core, so the numbers are the servers'. Latency: an open-loop "
        f"Python generator (uvloop, raw HTTP/1.1 keep-alive connections) sends "
        f"{config.rate:g} req/s for {config.rate_seconds:g} s on a fixed schedule and measures "
        "from each request's scheduled send time, so a stall shows as latency instead of a "
        "lower rate (wrk2 is not packaged; at this rate Python keeps its schedule). "
        "Everything — redis-server (append-only off), the uvicorn processes "
        "(`uvicorn --factory ... --workers N`, access log on, output to a file) and the "
        "load generator — shares the machine's CPUs; nothing is pinned. The bare endpoint "
        "(`bench/bare.py`) validates the same pydantic body and answers 202 with no Redis; "
        "it ignores `?wait`. Contention: "
        f"{config.contention_messages:,} messages to one session over "
        f"{config.contention_connections} connections, 4 workers, `LEASEGATE_QUEUE_CAP="
        f"{config.contention_queue_cap}`; drain = runs / (last `finished_at` - first "
        "`started_at`). Stop: a run with `delay_ms` 600000 admitted by one 2-worker process "
        f"and stopped by `POST .../stop` to another, {config.stop_repetitions} times; "
        "`finished_at` is Redis' clock on this machine. Redis cost: INFO before and after; a "
        "round trip is a socket read of a client connection (`total_reads_processed`), a "
        "pipeline arriving in one read counts once; the MONITOR sample sends one message at "
        "a time with an ECHO marker between messages, the sweeper's commands left out. "
        "The profile: py-spy (250 Hz, busy samples only) on one worker during an extra "
        f"{config.profile_seconds:g} s admission window, innermost frame grouped by package."
    )


def section(results: Results, machine: str, date: str, code: str) -> str:
    parts = [
        f"- Machine: {machine}\n- Code: {code}\n- Date: {date}",
        "![service benchmark](benchmarks.png)",
        "### Targets\n\n" + targets(results) + "\n" + findings(results),
        "### Throughput and latency\n\n"
        + throughput_table(results)
        + "\n"
        + cpu_table(results)
        + "\n"
        + latency_table(results)
        + "\n"
        + latency_note(results),
    ]
    if results.admission is not None and results.end_to_end is not None:
        parts.append(_sweeper_note(results.admission, results.end_to_end))
    if results.contention is not None:
        parts.append(
            "### Contention: one session, 4 workers\n\n"
            + contention_tables(results.contention, results.held_queue, results.config)
        )
    if results.stop is not None:
        parts.append("### Stop across processes\n\n" + stop_table(results.stop))
    if results.cost is not None:
        parts.append(
            "### Redis cost per message\n\n"
            + cost_tables(results.cost, results.contention)
            + "\n"
            + sequence_text(results.cost)
        )
    parts.append("### Scaling\n\n" + scaling_table(results))
    if (profile := profile_table(results.profiles)) != "":
        parts.append("### Where a worker's time goes\n\n" + profile)
    if results.problems:
        parts.append(
            "### Problems during the run\n\n" + "\n".join(f"- {p}" for p in results.problems)
        )
    parts.append("### Method\n\n" + method(results))
    return "\n\n".join(part.rstrip("\n") for part in parts)


def _sweeper_note(admission: Windows, end_to_end: Windows) -> str:
    return (
        f"After the admission windows the sweeper needed {admission.settle_seconds:.0f} s to "
        f"drop their sessions from its index, after the end-to-end windows "
        f"{end_to_end.settle_seconds:.0f} s."
    )


def sequence_text(cost: Cost) -> str:
    sample = cost.sample
    steps = " → ".join(f"`{step}`" for step in sample.example) or "(none recorded)"
    idle_rate = cost.idle.processed / cost.idle_seconds if cost.idle_seconds else 0.0
    return (
        f"One message's commands as the clients sent them (MONITOR, message "
        f"{sample.messages // 2 + 1} of {sample.messages}): {steps}. With no traffic the "
        f"workers send {idle_rate:.1f} commands/s (sweeper and heartbeats)."
    )


# --- the chart --------------------------------------------------------------------------


def chart(results: Results, path: Path = CHART) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    _throughput_axes(axes[0], results)
    _latency_axes(axes[1], results)
    _scaling_axes(axes[2], results)
    figure.suptitle(
        "leasegate vs a bare FastAPI endpoint (same body validation, no Redis), "
        "2 CPUs shared by everything"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


COLORS = {"leasegate": "#2b6cb0", "bare": "#a0aec0"}


def _bars(axis: Axes, labels: Sequence[str], series: dict[str, list[float]], fmt: str) -> None:
    width = 0.38
    for offset, (name, values) in enumerate(series.items()):
        xs = [i + (offset - 0.5) * width for i in range(len(labels))]
        bars = axis.bar(xs, values, width, label=name, color=COLORS[name])
        axis.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=8)
    axis.set_xticks(range(len(labels)), labels)
    axis.legend(fontsize=8)


def _target(axis: Axes, group: int, value: float, label: str) -> None:
    """A target line over one group of bars."""
    axis.hlines(value, group - 0.45, group + 0.45, colors="#c05621", linestyles=":",
                linewidth=1.5, label=label)  # fmt: skip


def _throughput_axes(axis: Axes, results: Results) -> None:
    assert results.admission and results.end_to_end and results.bare
    _bars(
        axis,
        ["admission (202)", "end to end\n(?wait=10, completed)"],
        {
            "leasegate": [results.admission.rate, results.end_to_end.rate],
            "bare": [results.bare.rate, results.bare.rate],
        },
        "{:,.0f}",
    )
    _target(axis, 0, ADMISSION_RATIO_TARGET * results.bare.rate,
            f"target: {ADMISSION_RATIO_TARGET}x bare")  # fmt: skip
    axis.legend(fontsize=8)
    axis.set_title("Throughput, 2 workers, distinct sessions")
    axis.set_ylabel("requests/s")


def _latency_axes(axis: Axes, results: Results) -> None:
    assert results.latency is not None and results.bare_latency is not None
    ours, bare = results.latency, results.bare_latency
    _bars(
        axis,
        ["p50", "p99"],
        {"leasegate": [ours.ms(50), ours.ms(99)], "bare": [bare.ms(50), bare.ms(99)]},
        "{:.1f}",
    )
    target = f"target p99: bare + {P99_MARGIN_TARGET_MS:g} ms"
    _target(axis, 1, bare.ms(99) + P99_MARGIN_TARGET_MS, target)
    axis.legend(fontsize=8)
    axis.set_title(f"Latency of POST ?wait=10 at {results.config.rate:g} req/s (open loop)")
    axis.set_ylabel("ms")


def _scaling_axes(axis: Axes, results: Results) -> None:
    assert results.bare is not None
    names = [name for name in SCALING if name in results.scaling]
    values = [results.scaling[name].rate for name in names]
    bars = axis.bar([name.replace(" x ", "\nx ") for name in names], values,
                    color=COLORS["leasegate"])  # fmt: skip
    axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    axis.axhline(results.bare.rate, color="#718096", linestyle="--", linewidth=1,
                 label="bare endpoint, 2 workers")  # fmt: skip
    axis.set_title("Admission throughput by workers and processes")
    axis.set_ylabel("requests/s")
    axis.legend(fontsize=8)


def write(results: Results, body: str) -> list[Path]:
    return [write_section(SECTION, body), chart(results)]
