"""Service benchmark: leasegate as deployed (uvicorn workers on one Redis) against the
naive in-process gateway it replaces (bench/naive.py) and a bare FastAPI endpoint that only
validates the same body (bench/bare.py).

Run `python -m bench.service` (or `make bench`, about 10 minutes on 2 cores); `--quick`
is a short smoke run (a couple of minutes) that writes nothing. One redis-server
(append-only off) is started for the whole run, and every server under test is a real
`uvicorn --factory ... --workers N` process (bench/service_phases.py):

1. throughput, distinct sessions, 1 and 2 workers: admission (202) and end to end
   (`?wait=10`, 200 once the run completed) for the bare endpoint, the naive gateway and
   leasegate; `?wait` p50/p99 at a fixed 100 req/s (open loop), 2 workers;
2. an AG-UI agent (bench/agui_agent.py, its own process) called directly and through
   leasegate (`backend = "ag-ui"`), one run per session, and the worker CPU the hop adds
   per run against the echo agent at the same rate (bench/agui.py);
3. Redis round trips and commands per `?wait` message and per 202 admission (MONITOR and
   INFO), memory per session; stop latency across processes;
4. contention: 1,000 messages posted at once to one session on 4 workers;
5. cost at rest: 10 to 5,000 sessions each with one long run in flight, nothing else
   happening: Redis round trips and worker CPU per second.

The results, with a verdict on each target, go to the "## Service" section of
docs/benchmarks.md and to docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.redis.server import RedisServer
from bench import loadgen, procs, service_report
from bench.machine import CpuAccount, code_version, machine_line
from bench.redis_cost import Probe
from bench.service_data import QUICK, Config, Results
from bench.service_phases import PHASES, Bench

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
                began = time.monotonic()
                try:
                    phase(bench, results)
                except Exception as exc:  # the other phases still run; the report says so
                    traceback.print_exc()
                    problem = f"{phase.__name__} failed: {type(exc).__name__}: {exc}"
                    results.problems.append(problem.split("\n")[0][:500])
                    print(f"  {results.problems[-1]}", flush=True)
                print(f"  ({phase.__name__}: {time.monotonic() - began:.0f} s)", flush=True)
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
