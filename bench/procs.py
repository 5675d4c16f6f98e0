"""Server processes of the service benchmark: uvicorn with N workers, as deployed
(leasegate, the naive in-process gateway and the bare endpoint alike).

`uvicorn --factory <factory> --workers N --host 127.0.0.1 --port P`, the output to a log
file, ready once `/readyz` answers 200 (polled until a deadline), stopped with SIGTERM.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.redis.server import free_port

LEASEGATE = "app.main:create_app"
BARE = "bench.bare:create_app"
NAIVE = "bench.naive:create_app"
AGUI_AGENT = "bench.agui_agent:create_app"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    workers: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (children of the supervisor that serve requests);
        with one worker, uvicorn serves in its own process and starts no child."""
        if self.workers == 1:
            return [self.process.pid] if self.process.poll() is None else []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []
        return [pid for pid in pids if "spawn_main" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def leasegate_env(redis_url: str, **settings: str) -> dict[str, str]:
    """The environment of a leasegate server: this Redis, quiet logs, `settings` on top
    (names without the LEASEGATE_ prefix); no other LEASEGATE_ variable leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASEGATE_")}
    env.update(
        LEASEGATE_REDIS_URL=redis_url,
        LEASEGATE_LOG_LEVEL="WARNING",
        LEASEGATE_LOG_FORMAT="text",
    )
    env.update({f"LEASEGATE_{name.upper()}": value for name, value in settings.items()})
    return env


def agent_env() -> dict[str, str]:
    """The environment of an agent process: this one's, without LEASEGATE_ variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LEASEGATE_")}


def uvicorn_args(factory: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory", factory,
        "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not _ready(server.url):
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}"
                               + _log_tail(server))  # fmt: skip
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.name} not ready in {READY_TIMEOUT:g} s" + _log_tail(server)
            )
        time.sleep(0.1)
    while len(server.worker_pids()) < server.workers and time.monotonic() < deadline:
        time.sleep(0.1)  # every worker has started once its pid is there; give it a moment
    time.sleep(0.5)


def _log_tail(server: Server) -> str:
    return f"; {server.log} ends:\n{server.log.read_text(errors='replace')[-2000:]}"


STOP_PROBLEMS: list[str] = []
"""Servers that did not exit within STOP_TIMEOUT of SIGTERM during this run (the report
names them): each was killed, with its workers, by its process group."""


def _stop(server: Server) -> None:
    """SIGTERM to uvicorn's supervisor (it stops its workers); past STOP_TIMEOUT, SIGKILL
    to the whole process group, so that no worker outlives the benchmark."""
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        hung = [pid for pid in server.worker_pids() if Path(f"/proc/{pid}").exists()]
        STOP_PROBLEMS.append(
            f"{server.name} ({server.workers} workers) had not exited {STOP_TIMEOUT:g} s after "
            f"SIGTERM (workers still running: {len(hung)}); killed"
        )
        kept = Path(tempfile.gettempdir()) / f"leasegate-bench-{server.name}-{server.port}.log"
        shutil.copyfile(server.log, kept)
        print(f"  warning: {STOP_PROBLEMS[-1]}; its log: {kept}", flush=True)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


def _stop_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the benchmark dies, even by SIGKILL."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def server(
    name: str, factory: str, workers: int, env: dict[str, str], logs: Path
) -> Iterator[Server]:
    """A uvicorn process with its own empty PROMETHEUS_MULTIPROC_DIR, ready on exit of the
    `with` line, stopped with SIGTERM when the block ends."""
    with tempfile.TemporaryDirectory(prefix=f"{name}-metrics-", dir=logs) as metrics_dir:
        port = free_port()
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                uvicorn_args(factory, port, workers),
                env=env | {"PROMETHEUS_MULTIPROC_DIR": metrics_dir},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: see _stop
                preexec_fn=_stop_with_parent,
            )
        started = Server(name, port, workers, process, log)
        try:
            _wait_ready(started)
            yield started
        finally:
            _stop(started)


@dataclass(frozen=True)
class ServerSpec:
    name: str
    factory: str
    workers: int
    env: dict[str, str]


@contextmanager
def servers(*specs: ServerSpec, logs: Path) -> Iterator[list[Server]]:
    """Several servers at once, started one after another; all stopped at the end."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(server(spec.name, spec.factory, spec.workers, spec.env, logs))
            for spec in specs
        ]
