"""docs/benchmarks.png: the service benchmark's chart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench.report import BENCHMARKS_MD
from bench.service_data import GATEWAYS, KINDS, LATENCY_WORKERS, WORKER_COUNTS, Results
from bench.service_targets import (
    AT_REST_TARGET,
    BARE_RATIO_TARGET,
    NAIVE_RATIO_TARGET,
    P99_MARGIN_TARGET_MS,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CHART = BENCHMARKS_MD.with_name("benchmarks.png")
COLORS = {"leasegate": "#2b6cb0", "naive": "#dd6b20", "bare": "#a0aec0"}
TARGET_COLOR = "#c53030"


def chart(results: Results, path: Path = CHART) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _throughput_axes(axes[0], results)
    _latency_axes(axes[1], results)
    _at_rest_axes(axes[2], results)
    figure.suptitle(
        "leasegate vs the naive in-process gateway and a bare FastAPI endpoint "
        "(2 CPUs shared by everything)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _bars(axis: Axes, labels: list[str], series: dict[str, list[float]], fmt: str) -> None:
    width = 0.8 / max(1, len(series))
    for offset, (name, values) in enumerate(series.items()):
        xs = [i + (offset - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = axis.bar(xs, values, width, label=name, color=COLORS[name])
        axis.bar_label(bars, labels=[fmt.format(v) if v else "" for v in values], fontsize=7)
    axis.set_xticks(range(len(labels)), labels)


def _throughput_axes(axis: Axes, results: Results) -> None:
    groups = [(kind, workers) for kind in KINDS for workers in WORKER_COUNTS]
    labels = [f"{'202' if kind == 'admission' else '?wait'}\n{workers} worker"
              + ("s" if workers > 1 else "") for kind, workers in groups]  # fmt: skip
    series = {g: [results.rate(g, w, k) or 0.0 for k, w in groups] for g in GATEWAYS}
    _bars(axis, labels, series, "{:,.0f}")
    width = 0.8 / len(GATEWAYS)
    legend = f"target: {NAIVE_RATIO_TARGET}x naive (?wait), {BARE_RATIO_TARGET}x bare (202)"
    for index, (kind, workers) in enumerate(groups):  # over leasegate's bar: its target
        other, ratio = ("naive", NAIVE_RATIO_TARGET) if kind == "end_to_end" else (
            "bare", BARE_RATIO_TARGET)  # fmt: skip
        if rate := results.rate(other, workers, kind):
            x = index - width
            axis.hlines(ratio * rate, x - width / 2, x + width / 2, colors=TARGET_COLOR,
                        linestyles=":", linewidth=1.5,
                        label=legend if index == 0 else "_nolegend_")  # fmt: skip
    axis.set_title("Throughput, distinct sessions")
    axis.set_ylabel("requests/s")
    tallest = max((v for values in series.values() for v in values), default=0.0)
    axis.set_ylim(0, max(tallest, 1.0) * 1.35)  # room for the legend above the bars
    axis.legend(fontsize=7, ncol=2, loc="upper left")


def _latency_axes(axis: Axes, results: Results) -> None:
    shown = [g for g in GATEWAYS if g in results.latency]
    series = {g: [results.latency[g].ms(50), results.latency[g].ms(99)] for g in shown}
    _bars(axis, ["p50", "p99"], series, "{:.1f}")
    if "naive" in results.latency:
        limit = results.latency["naive"].ms(99) + P99_MARGIN_TARGET_MS
        axis.hlines(limit, 0.55, 1.45, colors=TARGET_COLOR, linestyles=":", linewidth=1.5,
                    label=f"target: naive p99 + {P99_MARGIN_TARGET_MS:g} ms")  # fmt: skip
    axis.set_title(f"?wait=10 at {results.config.rate:g} req/s, {LATENCY_WORKERS} workers")
    axis.set_ylabel("ms")
    if shown:
        axis.legend(fontsize=8)


def _at_rest_axes(axis: Axes, results: Results) -> None:
    at_rest = results.at_rest
    steps = [s for s in at_rest.steps if s.runs > 0] if at_rest is not None else []
    axis.set_title("At rest: N runs in flight, 2 workers")
    if not steps:
        axis.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axis.transAxes)
        return
    runs = [s.runs for s in steps]
    axis.plot(runs, [s.per_interval or 0.0 for s in steps], "o-", color=COLORS["leasegate"],
              label="round trips / worker / 100 leases / interval")  # fmt: skip
    axis.axhline(AT_REST_TARGET, color=TARGET_COLOR, linestyle=":", linewidth=1.5,
                 label=f"target: ≤ {AT_REST_TARGET:g}")  # fmt: skip
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("runs in flight")
    axis.set_ylabel("round trips per worker per 100 leases per interval")
    cpu = axis.twinx()
    baseline = at_rest.baseline if at_rest is not None else None
    above = " above N = 0" if baseline is not None else ""
    cpu.plot(runs, [s.per_run_us(baseline) or 0.0 for s in steps], "s--",
             color=COLORS["naive"], label=f"worker CPU µs/s per run{above}")  # fmt: skip
    cpu.set_ylabel("worker CPU µs per second per run")
    cpu.set_ylim(bottom=0)
    lines, labels = axis.get_legend_handles_labels()
    more, more_labels = cpu.get_legend_handles_labels()
    axis.legend(lines + more, labels + more_labels, fontsize=7, loc="center right")
