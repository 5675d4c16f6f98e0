"""The targets of the service benchmark, each with its verdict: met or missed, by how much."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.at_rest import AtRest, AtRestResult
from bench.report import markdown_table
from bench.service_data import LATENCY_WORKERS, WORKER_COUNTS, Results

ROUND_TRIPS_TARGET = 2.0
COMMANDS_TARGET = 40.0
CPU_TARGET_MS = 2.2
"""Worker CPU per end-to-end `?wait` message (half the 4.4 ms measured before)."""
NAIVE_RATIO_TARGET = 0.4
BARE_RATIO_TARGET = 0.45
P99_MARGIN_TARGET_MS = 5.0
AT_REST_TARGET = 1.0
"""Round trips per worker per 100 held leases per heartbeat interval."""
AT_REST_JUDGED_FROM = 1000
"""The at-rest round-trip target is judged at N of at least this many runs (at the largest
N if none was measured), where the fixed cost of the sweeper weighs little."""
AGUI_HOP_TARGET_MS = 2.0
"""Worker CPU per run the AG-UI hop adds (AG-UI run - echo run at the same rate)."""
FLAT_CPU_TARGET = 1.5
FLAT_CPU_BASE = 100
EPSILON = 0.005


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None
    """None: not measured."""
    detail: str = ""

    @property
    def row(self) -> list[str]:
        if self.met is None:
            return [self.target, self.measured or "not measured", "not measured"]
        return [self.target, self.measured, f"{'met' if self.met else 'missed'}, {self.detail}"]


def at_most(
    target: str, value: float, limit: float, measured: str, unit: str = "", relative: bool = True
) -> Verdict:
    spare = limit - value
    if abs(spare) < EPSILON:
        detail = "exactly at the limit"
    elif spare > 0:
        detail = f"{spare:.2f}{unit} to spare"
    else:
        times = f" ({value / limit:.2f}x the limit)" if relative and limit > 0 else ""
        detail = f"by {-spare:.2f}{unit}{times}"
    return Verdict(target, measured, spare > -EPSILON, detail)


def at_least_ratio(target: str, ratio: float, limit: float, measured: str) -> Verdict:
    gap = ratio - limit
    place = "above" if gap >= 0 else "below"
    return Verdict(target, measured, gap >= 0, f"{abs(gap):.2f}x {place} the target")


def missing(target: str, why: str = "") -> Verdict:
    return Verdict(target, why, None)


# --- the targets ------------------------------------------------------------------------


def redis_targets(results: Results) -> list[Verdict]:
    rt = f"≤ {ROUND_TRIPS_TARGET:.1f} Redis round trips per uncontended `?wait` message"
    cmd = f"≤ {COMMANDS_TARGET:g} Redis commands per uncontended `?wait` message (scripts' inner commands included)"  # noqa: E501
    cost = results.cost
    if cost is None or not cost.waited.messages:
        return [missing(rt), missing(cmd)]
    sample, count = cost.waited, cost.messages
    trips, commands = sample.median(sample.round_trips), sample.median(sample.commands)
    where = f"request path, POST to 200 (MONITOR, median of {sample.messages} messages)"
    info = f"INFO over {count:,} messages, all included: "
    return [
        at_most(rt, trips, ROUND_TRIPS_TARGET,
                f"{trips:.1f} in the {where}; {info}{cost.window.reads / count:.2f}"),
        at_most(cmd, commands, COMMANDS_TARGET,
                f"{commands:.0f} in the {where}; {info}{cost.window.processed / count:.1f}"),
    ]  # fmt: skip


def cpu_target(results: Results) -> Verdict:
    target = f"worker CPU per end-to-end `?wait` message ≤ {CPU_TARGET_MS:g} ms"
    measured = results.windows("leasegate", 2, "end_to_end")
    if measured is None or measured.cpu_ms is None:
        return missing(target)
    naive = results.windows("naive", 2, "end_to_end")
    other = f"; naive {naive.cpu_ms:.2f} ms" if naive is not None and naive.cpu_ms else ""
    text = f"{measured.cpu_ms:.2f} ms (2 workers, {measured.rate:,.0f} req/s){other}"
    return at_most(target, measured.cpu_ms, CPU_TARGET_MS, text, " ms")


def ratio_targets(results: Results) -> list[Verdict]:
    verdicts = []
    for kind, other, limit in (("end_to_end", "naive", NAIVE_RATIO_TARGET),
                               ("admission", "bare", BARE_RATIO_TARGET)):  # fmt: skip
        for workers in WORKER_COUNTS:
            what = "end-to-end `?wait`" if kind == "end_to_end" else "admission (202)"
            whose = "the naive gateway's" if other == "naive" else "the bare endpoint's"
            plural = "s" if workers > 1 else ""
            target = f"{what} throughput ≥ {limit}x {whose}, {workers} worker{plural}"
            ours, theirs = (
                results.rate("leasegate", workers, kind),
                results.rate(other, workers, kind),
            )
            if not ours or not theirs:
                verdicts.append(missing(target))
                continue
            text = f"{ours / theirs:.2f}x ({ours:,.0f} vs {theirs:,.0f} req/s)"
            verdicts.append(at_least_ratio(target, ours / theirs, limit, text))
    return verdicts


def latency_target(results: Results) -> Verdict:
    target = (f"`?wait` p99 at {results.config.rate:g} req/s within {P99_MARGIN_TARGET_MS:g} "
              f"ms of the naive gateway's ({LATENCY_WORKERS} workers)")  # fmt: skip
    ours, naive = results.latency.get("leasegate"), results.latency.get("naive")
    if ours is None or naive is None:
        return missing(target)
    mine, theirs = ours.ms(99), naive.ms(99)
    over = mine - theirs
    text = f"{mine:.1f} vs {theirs:.1f} ms ({over:+.1f} ms)"
    return at_most(target, over, P99_MARGIN_TARGET_MS, text, " ms", relative=False)


def _judged(at_rest: AtRestResult) -> list[AtRest]:
    held = [step for step in at_rest.steps if step.runs > 0]
    big = [step for step in held if step.runs >= AT_REST_JUDGED_FROM]
    return big or held[-1:]


def at_rest_targets(results: Results) -> list[Verdict]:
    trips = (f"at rest: ≤ {AT_REST_TARGET:g} Redis round trip per worker per 100 held leases "
             "per heartbeat interval (TTL/3)")  # fmt: skip
    flat = (f"at rest: flat per-run worker CPU (above the idle baseline, at the largest N "
            f"within {FLAT_CPU_TARGET}x of that at {FLAT_CPU_BASE})")  # fmt: skip
    at_rest = results.at_rest
    if at_rest is None or not (judged := _judged(at_rest)):
        why = f"the phase failed {at_rest.failure}" if at_rest and at_rest.failure else ""
        return [missing(trips, why), missing(flat, why)]
    values = [(step.runs, step.per_interval or 0.0) for step in judged]
    worst = max(value for _, value in values)
    text = "; ".join(f"{value:.2f} at N = {runs:,}" for runs, value in values)
    verdicts = [at_most(trips, worst, AT_REST_TARGET, text + _partial(at_rest))]
    verdicts.append(_flat(flat, at_rest))
    return verdicts


def _partial(at_rest: AtRestResult) -> str:
    return f" (the phase failed {at_rest.failure})" if at_rest.failure else ""


def _flat(target: str, at_rest: AtRestResult) -> Verdict:
    base = next((s for s in at_rest.steps if s.runs == FLAT_CPU_BASE), None)
    largest = max(at_rest.steps, key=lambda s: s.runs)
    baseline = at_rest.baseline
    if base is None or baseline is None or largest.runs <= FLAT_CPU_BASE:
        return missing(target, f"no step above N = {FLAT_CPU_BASE}" + _partial(at_rest))
    low, high = base.per_run_us(baseline), largest.per_run_us(baseline)
    if low is None or high is None or low <= 0:
        return missing(target, f"no CPU above the baseline at N = {FLAT_CPU_BASE}")
    ratio = high / low
    text = (f"{high:.1f} µs/s per run at N = {largest.runs:,} vs {low:.1f} at "
            f"{FLAT_CPU_BASE}: {ratio:.2f}x" + _partial(at_rest))  # fmt: skip
    return at_most(target, ratio, FLAT_CPU_TARGET, text, "x", relative=False)


def agui_target(results: Results) -> Verdict:
    target = f"the AG-UI hop costs ≤ {AGUI_HOP_TARGET_MS:g} ms of worker CPU per run"
    result = results.agui
    if result is None or (hop := result.hop_ms) is None:
        return missing(target)
    agui, echo = result.legs["agui"], result.baseline
    assert echo is not None and agui.worker_ms is not None and echo.worker_ms is not None
    paced = " paced" if echo.name == "paced" else ""
    text = (f"{hop:.2f} ms ({agui.worker_ms:.2f} ms per AG-UI run - {echo.worker_ms:.2f} ms "
            f"per{paced} echo run, 2 workers, {result.connections} at once, "
            f"{agui.rate:,.0f} and {echo.rate:,.0f} runs/s)")  # fmt: skip
    return at_most(target, hop, AGUI_HOP_TARGET_MS, text, " ms")


TARGETS: list[Callable[[Results], list[Verdict]]] = [
    redis_targets,
    lambda results: [cpu_target(results)],
    ratio_targets,
    lambda results: [latency_target(results)],
    at_rest_targets,
    lambda results: [agui_target(results)],
]


def verdicts(results: Results) -> list[Verdict]:
    return [verdict for target in TARGETS for verdict in target(results)]


def targets_table(results: Results) -> str:
    rows = [verdict.row for verdict in verdicts(results)]
    return markdown_table(["target", "measured", "verdict"], rows)
