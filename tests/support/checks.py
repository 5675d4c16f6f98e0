"""Checkers over run records read back from the API."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any


def _t(value: str) -> datetime:
    return datetime.fromisoformat(value)


def run_violations(runs: list[dict[str, Any]], *, in_order: bool = True) -> list[str]:
    """Runs of one session that overlapped, whose fences fell, or (with `in_order`, for
    enqueue-only traffic) that did not start in admission order."""
    found = []
    started = sorted((r for r in runs if r["started_at"]), key=lambda r: _t(r["started_at"]))
    for before, after in itertools.pairwise(started):
        if before["finished_at"] is None or _t(after["started_at"]) < _t(before["finished_at"]):
            found.append(f"{after['run_id']} started before {before['run_id']} finished")
        if after["fence"] < before["fence"]:
            found.append(f"fence fell from {before['fence']} to {after['fence']}")
    by_admission = sorted(started, key=lambda r: _t(r["created_at"]))
    if in_order and [r["run_id"] for r in by_admission] != [r["run_id"] for r in started]:
        found.append("runs did not start in admission order")
    return found
