"""The machine a benchmark ran on, and who used its CPU meanwhile.

Machine-wide CPU time comes from the first line of /proc/stat; a process's from
/proc/<pid>/stat; the benchmark's own and its waited-for children's (wrk, and every server
once stopped) from getrusage. Interrupt and softirq time (loopback networking, mostly)
is counted by the kernel apart from any process and is reported as such.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SECONDS = 1.0
# Columns of /proc/stat's "cpu" line, in order.
COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _stat() -> dict[str, float]:
    """CPU seconds of the whole machine since boot, by /proc/stat column."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return dict.fromkeys(COLUMNS, 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    return {name: int(value) / tick for name, value in zip(COLUMNS, fields, strict=False)}


def _busy(stat: dict[str, float]) -> float:
    """Seconds the CPUs ran anything, interrupts included (idle, iowait and steal not)."""
    return sum(v for k, v in stat.items() if k not in ("idle", "iowait", "steal"))


def _kernel(stat: dict[str, float]) -> float:
    return stat["irq"] + stat["softirq"]


def process_seconds(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _usage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def own_seconds() -> float:
    """CPU seconds of this process and of every descendant it has waited for."""
    return _usage(resource.RUSAGE_SELF) + _usage(resource.RUSAGE_CHILDREN)


def code_version(folder: Path = ROOT) -> str:
    """The commit checked out, and whether app/ differs from it (e.g. `abc1234`,
    `abc1234 + uncommitted changes in app/`)."""
    try:
        commit = _git(folder, "rev-parse", "--short", "HEAD")
        dirty = _git(folder, "status", "--porcelain", "--", "app")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return commit + (" + uncommitted changes in app/" if dirty else "")


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                          check=True, timeout=10)  # fmt: skip
    return done.stdout.strip()


# --- the whole run ----------------------------------------------------------------------


@dataclass(frozen=True)
class CpuUse:
    idle_before: float
    """Share of the machine's CPU that was idle just before the run."""
    others: float
    """Share of the machine's CPU used during the run outside the benchmark's processes
    (interrupt time included)."""


@dataclass(frozen=True)
class CpuAccount:
    idle_before: float
    busy: float
    own: float
    at: float

    @classmethod
    def start(cls) -> CpuAccount:
        before = _stat()
        time.sleep(SAMPLE_SECONDS)
        after = _stat()
        total = sum(after.values()) - sum(before.values())
        idle = 1 - (_busy(after) - _busy(before)) / max(total, 1e-9)
        return cls(idle, _busy(after), own_seconds(), time.monotonic())

    def finish(self) -> CpuUse:
        """Call once every child process has been waited for."""
        capacity = (time.monotonic() - self.at) * (os.cpu_count() or 1)
        others = (_busy(_stat()) - self.busy) - (own_seconds() - self.own)
        return CpuUse(self.idle_before, max(0.0, others / capacity))


def machine_line(redis_version: str, cpu: CpuUse | None = None) -> str:
    line = (
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"redis-server {redis_version} on loopback"
    )
    if cpu is not None:
        line += (
            f"; CPU idle before the run {cpu.idle_before:.0%}; outside the benchmark's "
            f"processes {cpu.others:.0%} of the CPU was used during the run (interrupts "
            "included)"
        )
    return line


# --- an interval, by process ------------------------------------------------------------


@dataclass(frozen=True)
class CpuSplit:
    """Cores used on average over an interval, by who."""

    workers: float
    redis: float
    load: float
    """The load generator: wrk (a child process) or this Python process."""
    kernel: float
    """Interrupts and softirqs (loopback networking), not counted to any process."""
    others: float
    """Every other process on the machine (other servers' workers included)."""


@dataclass(frozen=True)
class CpuMeter:
    workers: list[int]
    redis: int
    start: dict[str, float]

    @classmethod
    def begin(cls, workers: list[int], redis: int) -> CpuMeter:
        return cls(workers, redis, cls._read(workers, redis))

    @staticmethod
    def _read(workers: list[int], redis: int) -> dict[str, float]:
        stat = _stat()
        return {
            "workers": sum(process_seconds(pid) for pid in workers),
            "redis": process_seconds(redis),
            "load": own_seconds(),
            "kernel": _kernel(stat),
            "busy": _busy(stat),
            "at": time.monotonic(),
        }

    def end(self) -> CpuSplit:
        now = self._read(self.workers, self.redis)
        used = {key: now[key] - self.start[key] for key in now}
        elapsed = max(used.pop("at"), 1e-9)
        others = used.pop("busy") - sum(used.values())
        cores = {key: value / elapsed for key, value in used.items()}
        return CpuSplit(**cores, others=max(0.0, others) / elapsed)


def precise_seconds(pid: int) -> float:
    """CPU seconds a live process's threads have run, from /proc/<pid>/task/*/schedstat
    (nanoseconds, where `process_seconds` has clock ticks); threads that have exited are
    not counted. Falls back to `process_seconds` without schedstat; 0 if the process is
    gone."""
    total, found = 0, False
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
            found = True
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9 if found else process_seconds(pid)
