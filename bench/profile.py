"""Where a worker spends its time under load: py-spy on one uvicorn worker, summarized.

`py-spy record --format raw` writes collapsed stacks ("frame;frame;... count"). Only the
worker's event-loop thread is kept (uvicorn's supervisor ping thread is not the request
path). Self time is grouped by the package of the innermost frame; inclusive time is
listed for leasegate's own functions.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^:()]*)(?::\d+)?\)$")
EVENT_LOOP = "asyncio/runners.py"
LOOP_FRAME = "Runner.run"


@dataclass(frozen=True)
class Profile:
    samples: int
    by_package: list[tuple[str, float]]
    """(package of the innermost frame, share of samples), largest first."""
    app_functions: list[tuple[str, float]]
    """(leasegate function, inclusive share), largest first."""


def executable() -> str | None:
    """py-spy on PATH, or beside this Python (a virtualenv's bin/)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def start(
    spy: str, pid: int, seconds: float, rate: int = 250
) -> tuple[subprocess.Popen[bytes], Path]:
    folder = Path(tempfile.mkdtemp(prefix="leasegate-profile-"))
    output = folder / "stacks.txt"
    args = [spy, "record", "--nonblocking", "--format", "raw", "-r", str(rate),
            "-d", str(round(seconds)), "-p", str(pid), "-o", str(output)]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return process, output


def finish(process: subprocess.Popen[bytes], output: Path) -> Profile | None:
    """The summary, or None if py-spy could not sample (e.g. no ptrace permission)."""
    _, errors = process.communicate(timeout=60)
    if process.returncode != 0 or not output.exists():
        print(f"  py-spy failed: {errors.decode(errors='replace')[-500:]}", flush=True)
        return None
    profile = summarize(output.read_text())
    shutil.rmtree(output.parent, ignore_errors=True)
    return profile


def summarize(collapsed: str, top: int = 8) -> Profile:
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for stack, count in _stacks(collapsed):
        total += count
        packages[_package(stack[-1])] += count
        for name in {_app_function(frame) for frame in stack} - {None}:
            functions[str(name)] += count
    if total == 0:
        return Profile(0, [], [])
    return Profile(
        total,
        [(name, n / total) for name, n in packages.most_common(top)],
        [(name, n / total) for name, n in functions.most_common(top)],
    )


def _stacks(collapsed: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in collapsed.splitlines():
        text, _, count = line.rpartition(" ")
        frames = text.split(";")
        if text and count.isdigit() and any(EVENT_LOOP in frame for frame in frames):
            stacks.append((frames, int(count)))
    return stacks


def _package(frame: str) -> str:
    found = FRAME.match(frame)
    if found is None:
        return "other"
    if found["function"] == LOOP_FRAME and EVENT_LOOP in found["path"]:
        return "event loop (uvloop, C)"
    head = found["path"].split("site-packages/")[-1].split("/", 1)[0].removesuffix(".py")
    return "app (leasegate)" if head == "app" else head


def _app_function(frame: str) -> str | None:
    found = FRAME.match(frame)
    if found is None or not found["path"].startswith("app/"):
        return None
    return f"{found['function']} ({found['path']})"
