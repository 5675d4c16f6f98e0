"""The tables of the "## Service" section of docs/benchmarks.md."""

from __future__ import annotations

from bench.at_rest import AtRestResult
from bench.loadgen import Latencies, Sample, percentile
from bench.monitor import Sequence
from bench.profile import Profile
from bench.report import markdown_table
from bench.scenarios import Contention, Cost, HeldQueue, StopLatency
from bench.service_data import GATEWAYS, KINDS, LATENCY_WORKERS, WORKER_COUNTS, Config, Results

POSITION_BUCKET = 200
KIND_LABEL = {"admission": "admission (202)", "end_to_end": "end to end (`?wait=10`, 200)"}


def n(value: float) -> str:
    return f"{value:,.0f}"


def ms(value: float) -> str:
    return f"{value:.1f}"


def _opt(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


# --- throughput, CPU, latency -----------------------------------------------------------


def throughput_table(results: Results) -> str:
    rows = []
    for kind in KINDS:
        for workers in WORKER_COUNTS:
            rate = {g: results.rate(g, workers, kind) for g in GATEWAYS}
            ours = results.windows("leasegate", workers, kind)
            naive = results.windows("naive", workers, kind)

            def ratio(other: float | None, rate: dict[str, float | None] = rate) -> str:
                mine = rate["leasegate"]
                return f"{mine / other:.2f}x" if mine is not None and other else "-"

            rows.append([
                f"{KIND_LABEL[kind]}, {workers} worker{'s' if workers > 1 else ''}",
                *(_opt(rate[g]) for g in GATEWAYS),
                ratio(rate["naive"]), ratio(rate["bare"]),
                _opt(ours.median.p99_ms if ours else None, "{:.1f}"),
                _opt(naive.median.p99_ms if naive else None, "{:.1f}"),
                " / ".join(n(w.rate) for w in ours.windows) if ours else "-",
            ])  # fmt: skip
    header = ["distinct sessions", "leasegate req/s", "naive req/s", "bare req/s",
              "vs naive", "vs bare", "leasegate p99 ms", "naive p99 ms",
              "leasegate windows req/s"]  # fmt: skip
    return markdown_table(header, rows)


def cpu_table(results: Results) -> str:
    rows = []
    for (gateway, workers, kind), measured in results.throughput.items():
        if measured.cpu is None:
            continue
        cpu = measured.cpu
        cores = (cpu.workers, cpu.redis, cpu.load, cpu.kernel, cpu.others)
        kind_text = "202 (ignores `?wait`)" if gateway == "bare" else KIND_LABEL[kind]
        rows.append([f"{gateway}, {workers} w, {kind_text}", n(measured.rate),
                     *(f"{c:.2f}" for c in cores), _opt(measured.cpu_ms, "{:.2f}")])  # fmt: skip
    header = ["cores used during the windows", "req/s", "workers", "redis-server",
              "load generator", "interrupts", "other processes",
              "worker CPU ms per request"]  # fmt: skip
    return markdown_table(header, rows)


def _latency_row(name: str, latencies: Latencies, expect: int) -> list[str]:
    other = len(latencies.samples) - latencies.count(expect)
    cells = [latencies.ms(pct) for pct in (50, 90, 99, 100)]
    return [name, n(len(latencies.samples)), *(ms(c) for c in cells), str(other),
            str(latencies.late_starts)]  # fmt: skip


def latency_table(results: Results) -> str:
    label = {"leasegate": "leasegate (200 once the run completed)",
             "naive": "naive gateway (200 once the run completed)",
             "bare": "bare endpoint (202 at once)"}  # fmt: skip
    rows = [
        _latency_row(label[g], results.latency[g], 202 if g == "bare" else 200)
        for g in GATEWAYS
        if g in results.latency
    ]
    header = [f"`POST ...?wait=10`, {LATENCY_WORKERS} workers", "requests", "p50 ms", "p90 ms",
              "p99 ms", "max ms", "other status", "sent > 1 ms late"]  # fmt: skip
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


def latency_note(latencies: Latencies) -> str:
    starts = slow_bursts(latencies)
    count = max(1, round(len(latencies.samples) * 0.01))
    shown = ", ".join(f"{t:.1f}" for t in starts[:12]) + (", ..." if len(starts) > 12 else "")
    return (
        f"Leasegate's slowest 1% ({count} requests) were due in {len(starts)} burst(s), at "
        f"{shown} s into the run (each worker tries to sweep every 4.5-5 s)."
    )


# --- contention and stop ----------------------------------------------------------------


def contention_tables(contention: Contention, held: HeldQueue | None, config: Config) -> str:
    admission = contention.admission
    statuses = ", ".join(f"{k} x {status}" for status, k in sorted(contention.statuses.items()))
    summary = markdown_table(
        ["messages", "answers", "runs drained", "drain runs/s", "admission p50 ms",
         "admission p99 ms"],
        [[n(config.contention_messages), statuses, n(contention.runs),
          n(contention.runs_per_s), ms(admission.ms(50)), ms(admission.ms(99))]],
    )  # fmt: skip
    note = (
        f"Burst: the messages above, posted over {config.contention_connections} connections "
        "while the session drains."
    )
    if held is not None:
        note += (
            f" One poster: {n(len(held.positions))} messages posted one after another while "
            "a slow run holds the session, so nothing drains and each lands one place further "
            "back; its latency is the admission's own cost at that queue length."
        )
    return "\n".join([summary, position_table(contention, held), note, "",
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
            cells += ([n(len(group.samples)), ms(group.ms(50)), ms(group.ms(99))]
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
        f"Burst: the first {count} admissions sent: p50 {ms(first.ms(50))} ms, p99 "
        f"{ms(first.ms(99))} ms; the last {count}: p50 {ms(last.ms(50))} ms, p99 "
        f"{ms(last.ms(99))} ms (deepest queue position {max(contention.positions, default=0)})."
    )


def stop_table(stop: StopLatency) -> str:
    def row(name: str, values: list[float]) -> list[str]:
        cells = [percentile(values, pct) for pct in (50, 99, 100)]
        return [name, n(len(values)), *(ms(cell) for cell in cells)]

    rows = [
        row("stop request sent → run's `finished_at`", stop.to_finished_ms),
        row("the stop request's round trip", stop.request_ms),
    ]
    header = ["other process than the holder", "runs", "p50 ms", "p99 ms", "max ms"]
    table = markdown_table(header, rows)
    if stop.failures:
        table += f"\n{stop.failures} repetition(s) did not end `cancelled` and are left out.\n"
    return table


# --- Redis ------------------------------------------------------------------------------


def _sample_rows(name: str, sample: Sequence) -> list[list[str]]:
    def cells(values: list[int]) -> str:
        return f"{sample.median(values):.1f} (mean {sample.mean(values):.2f})"

    return [
        [f"{name}: round trips in the request path (MONITOR)", cells(sample.round_trips)],
        [f"{name}: commands in the request path, scripts' inner ones included",
         cells(sample.commands)],
        [f"{name}: after the response (round trips, commands)",
         f"{sample.mean(sample.after_round_trips):.2f}, {sample.mean(sample.after_commands):.2f}"],
    ]  # fmt: skip


def cost_tables(cost: Cost, contention: Contention | None) -> str:
    count, window, swept = cost.messages, cost.window, cost.with_sweeper
    rows = [
        *_sample_rows("`?wait=10`", cost.waited),
        *_sample_rows("202", cost.admitted),
        ["`?wait=10`: socket reads per message in the MONITOR sample (all included)",
         f"{cost.waited_reads:.2f}"],
        [f"`?wait=10`, {n(count)} messages over 8 connections (INFO): socket reads, commands",
         f"{window.reads / count:.2f}, {window.processed / count:.2f}"],
        [f"the same until the sweeper had dropped the sessions ({cost.settle_seconds:.0f} s)",
         f"{swept.reads / count:.2f}, {swept.processed / count:.2f}"],
        ["memory per idle session with its one completed run (`used_memory` less clients')",
         f"{cost.memory_per_session / 1024:.1f} KiB"],
    ]  # fmt: skip
    if contention is not None and contention.runs:
        per_thousand = contention.memory_bytes / contention.runs * 1000 / 1024**2
        rows.append([f"memory per 1,000 runs retained in one session ({n(contention.runs)} runs)",
                     f"{per_thousand:.2f} MiB"])  # fmt: skip
    header = ["per uncontended message (echo agent); MONITOR: median of the sample", "value"]
    return markdown_table(header, rows) + "\n" + command_table(cost)


def command_table(cost: Cost) -> str:
    sample, calls = cost.waited, cost.window.per(cost.messages)
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
        rows.append([f"`{name.upper()}`", f"{sum(sent.values()):.2f}"
                     + (f" ({detail})" if detail else ""), f"{inside:.2f}",
                     f"{calls.get(name, 0.0):.2f}"])  # fmt: skip
    header = ["`?wait=10` message: command", "sent by a client (MONITOR)",
              "inside scripts (MONITOR)",
              f"all calls ({n(cost.messages)} messages, commandstats)"]  # fmt: skip
    return markdown_table(header, rows)


def sequence_text(cost: Cost) -> str:
    def steps(example: list[str]) -> str:
        return " → ".join(f"`{step}`" for step in example) or "(none)"

    waited, admitted = cost.waited, cost.admitted
    idle_rate = cost.idle.processed / cost.idle_seconds if cost.idle_seconds else 0.0
    return (
        f"One `?wait=10` message's commands as the clients sent them (MONITOR, message "
        f"{waited.messages // 2 + 1} of {waited.messages}): {steps(waited.example)}; after its "
        f"200: {steps(waited.example_after)}. A 202 admission: {steps(admitted.example)}; "
        f"then its run: {steps(admitted.example_after)}. With no traffic the workers send "
        f"{idle_rate:.1f} commands/s (sweeper and heartbeats)."
    )


# --- at rest ----------------------------------------------------------------------------


def at_rest_table(at_rest: AtRestResult) -> str:
    baseline = at_rest.baseline
    rows = []
    for step in at_rest.steps:
        sample = step.sample
        above = step.per_run_us(baseline) if baseline is not None and step.runs else None
        rows.append([
            n(step.runs), f"{step.round_trips_per_s:,.1f}",
            f"{sample.heartbeat:,.1f} / {sample.sweeper:,.1f} / {sample.other:,.1f}",
            _opt(step.per_interval, "{:.2f}"), f"{step.reads_per_s:,.1f}",
            f"{step.commands_per_s:,.0f}", f"{step.worker_ms_per_s:.1f}",
            _opt(step.per_run_us(), "{:.1f}"), _opt(above, "{:.1f}"),
            f"{step.redis_ms_per_s:.1f}",
            f"{step.posted / step.post_seconds:,.0f}" if step.posted else "-",
        ])  # fmt: skip
    header = ["runs in flight", "Redis round trips/s", "of which heartbeat / sweeper / other",
              "round trips per worker per 100 leases per interval", "socket reads/s (INFO)",
              "commands/s (INFO)", "worker CPU ms/s", "per run µs/s",
              "per run above N = 0, µs/s", "redis-server CPU ms/s (MONITOR on)",
              "posted runs/s"]  # fmt: skip
    table = markdown_table(header, rows)
    lost = at_rest.sessions - at_rest.still_running
    if at_rest.stopped:
        table += (
            f"\nAt the end, {n(at_rest.sessions)} sessions were stopped: "
            f"{n(at_rest.still_running)} stops cancelled a run still in flight"
            + (f", {n(lost)} found none (their run had ended early: lost lease or failure)."
               if lost else ", as expected.")
        )  # fmt: skip
    if at_rest.failure:
        table += f"\n\n**The phase failed {at_rest.failure}**; the rows above are what it measured."
    return table


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
