"""Eight OS processes contend for three leases; the checker must see no overlap.

The same harness run with a lease acquired without NX must be caught by the checker,
which shows the checker can fail.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from app.redis.server import RedisServer
from tests.support.contention import contend, load_holds, violations

PROCESSES = 8
KEYS = ["alpha", "beta", "gamma"]


def run_contention(
    server: RedisServer, tmp_path: Path, *, broken: bool, duration: float
) -> list[str]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    outputs = [tmp_path / f"holds-{i}.json" for i in range(PROCESSES)]
    workers = [
        context.Process(
            target=contend, args=(server.url, KEYS, duration, str(out), broken, barrier)
        )
        for out in outputs
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0, f"contender exited with {worker.exitcode}"
    holds = load_holds(outputs)
    assert len(holds) > 100, f"too little contention to judge: {len(holds)} holds"
    assert {h.key for h in holds} == set(KEYS)
    return violations(holds)


@pytest.mark.multiprocess
def test_processes_never_hold_one_lease_at_once(redis_server: RedisServer, tmp_path: Path) -> None:
    assert run_contention(redis_server, tmp_path, broken=False, duration=3.0) == []


@pytest.mark.multiprocess
def test_checker_catches_a_lease_without_nx(redis_server: RedisServer, tmp_path: Path) -> None:
    found = run_contention(redis_server, tmp_path, broken=True, duration=1.0)
    assert any("started before" in v for v in found), found
