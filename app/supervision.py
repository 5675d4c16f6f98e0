"""A worker's ties to the process that started it: uvicorn's multiprocess supervisor, under
`leasegate serve` or a bare `uvicorn --factory app.main:create_app --workers N`.

- A worker dies with its supervisor, even one killed by SIGKILL (Linux's parent-death
  signal), so no worker keeps serving, and holding leases, for a supervisor that is gone.
- A worker that finds the configuration invalid says so once for all workers and ends the
  server with a non-zero exit code. uvicorn's supervisor stops on a worker's startup
  failure but then exits 0 itself; under a bare uvicorn, where no leasegate code runs in
  the supervisor, the worker ends the supervisor by SIGKILL (exit code 137) and the other
  workers die with it. Under `leasegate serve`, which checks the configuration before any
  worker starts and reads its workers' exit codes, the worker only exits.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import sys
from typing import NoReturn

from app import logs

STARTUP_FAILURE = 3
"""How a worker whose configuration is invalid exits: uvicorn's code for a worker that could
not start, on which its supervisor (uvicorn 0.50 and later) stops instead of starting
another worker that would fail the same way, forever."""

SUPERVISOR_ENV = "LEASEGATE_SUPERVISOR_PID"
"""Set by `leasegate serve` to its own pid: its workers leave the stopping to it."""
REFUSAL_ENV = "LEASEGATE_REFUSAL_FILE"
"""Set by `leasegate serve`: the first of its workers to refuse the configuration creates
this file and says why; the others, however late they get there, see it and say nothing."""

PR_SET_PDEATHSIG = 1
_held: list[socket.socket] = []


def supervisor_pid() -> int | None:
    """The pid of the supervisor that spawned this process, if it is a uvicorn worker."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else None


def die_with_supervisor() -> None:
    """SIGKILL this worker when its supervisor dies (Linux), however it dies.

    The signal is tied to the thread that spawned the worker: uvicorn spawns its workers
    from its main thread, which lives as long as the supervisor does.
    """
    parent = supervisor_pid()
    if parent is None or sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(STARTUP_FAILURE)


def refuse_to_start(problem: str) -> NoReturn:
    """End the server for an invalid configuration: `problem` (one line, naming the
    setting) on stderr once, however many workers find it, then a non-zero exit."""
    parent = supervisor_pid()
    if parent is None:
        _print(f"invalid configuration: {problem}")
        sys.exit(STARTUP_FAILURE)
    if os.getppid() != parent:  # the supervisor is already gone
        os._exit(STARTUP_FAILURE)
    supervised_by_leasegate = os.environ.get(SUPERVISOR_ENV) == str(parent)
    if _first_to_report(parent):
        if supervised_by_leasegate:
            _print(f"invalid configuration: {problem}")
        else:
            _print(
                f"invalid configuration: {problem}; stopping uvicorn's supervisor (pid {parent})"
            )
            os.kill(parent, signal.SIGKILL)
    sys.exit(STARTUP_FAILURE)


def _first_to_report(parent: int) -> bool:
    """Whether this is the first of the supervisor's workers to report. Under `leasegate
    serve`: the one that creates its refusal file. Under a bare uvicorn: the one that binds
    a name in Linux's abstract socket namespace (freed when it exits, but it ends the
    supervisor first, and the other workers with it)."""
    marker = os.environ.get(REFUSAL_ENV)
    if marker and os.environ.get(SUPERVISOR_ENV) == str(parent):
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        except OSError:
            return True
        return True
    if sys.platform != "linux":
        return True
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0leasegate-refused-start-{parent}")
    except OSError:
        sock.close()
        return False
    _held.append(sock)
    return True


def _print(message: str) -> None:
    print(logs.startup_line(message), file=sys.stderr, flush=True)
