"""A service started as a user starts it, with its stdout and stderr kept apart, and the
processes it started found by a mark in their environment (workers, redis-server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.redis.server import free_port
from tests.support.servers import is_ready
from tests.support.waiting import wait_until_sync

MARK = "LEASEGATE_TEST_MARK"


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    url: str
    mark: str = field(default="")

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.output().splitlines() if needle in line]

    def family(self) -> set[int]:
        """Every live process carrying this service's mark, the service itself included."""
        return marked(self.mark)


def new_mark() -> str:
    return uuid.uuid4().hex


@contextmanager
def service(
    args: list[str],
    env: dict[str, str],
    folder: Path,
    url: str,
    *,
    wait_ready: bool = True,
    timeout: float = 30.0,
) -> Iterator[Service]:
    folder.mkdir(parents=True, exist_ok=True)
    mark = new_mark()
    out, err = folder / "stdout.log", folder / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(args, env={**env, MARK: mark}, stdout=stdout, stderr=stderr)
    started = Service(process, out, err, url, mark)
    try:
        if wait_ready:
            wait_until_sync(
                lambda: is_ready(url) or process.poll() is not None, timeout, "service ready"
            )
            assert process.poll() is None, started.output()
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def marked(mark: str) -> set[int]:
    """Live (not zombie) processes whose environment carries MARK=mark."""
    needle = f"{MARK}={mark}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def left_behind(mark: str) -> set[int]:
    """Processes with MARK=mark still alive once the process that started them has
    exited, but for multiprocessing's resource tracker: the supervisor's helper, which ends
    by itself when it reads the supervisor's end of its pipe close, a moment after it (a
    loaded machine shows that moment). Waits up to 2 s for the tracker to end, then
    returns whatever else is alive."""
    others = {pid for pid in marked(mark) if not _is_resource_tracker(pid)}
    wait_until_sync(lambda: not (marked(mark) - others), 2.0, "the resource tracker to end")
    return others


def _is_resource_tracker(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"multiprocessing.resource_tracker" in command


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill_quietly(pids: set[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


MODULE_START_TIMEOUT = 30.0


@contextmanager
def serving_module(module: str, probe: str, log_path: Path, what: str) -> Iterator[str]:
    """`python -m <module> --port N` on a free port, its output in `log_path`, until `GET
    <probe>` answers 200: its base URL; killed at the end (the tests' agent processes)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", module, "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT)

    def answers() -> bool:
        try:
            return httpx.get(f"{url}{probe}", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until_sync(lambda: answers() or process.poll() is not None, MODULE_START_TIMEOUT, what)
        assert process.poll() is None, log_path.read_text()
        yield url
    finally:
        process.kill()
        process.wait()
