"""`leasegate serve`: run the service, with an embedded redis-server when none is configured.

In this order, so that a refused start touches nothing: the configuration is checked; the
data folder is locked (one instance per folder); then the embedded Redis starts, the
metrics folder is emptied, and uvicorn's supervisor starts the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors.multiprocess import Multiprocess

from app import logs
from app.cli.instance import DataDirInUseError, InstanceLock
from app.errors import ConfigurationError
from app.main import load_configuration
from app.redis.server import RedisServer
from app.settings import Settings
from app.supervision import REFUSAL_ENV, STARTUP_FAILURE, SUPERVISOR_ENV

log = logging.getLogger("leasegate")

INVALID_CONFIGURATION = 2
"""Exit code when the settings or the agents file are not valid (nothing was started)."""
DATA_DIR_IN_USE = 4
"""Exit code when another `leasegate serve` runs on the same data folder."""
# STARTUP_FAILURE (3): a worker could not start (uvicorn's code).


def run_serve(host: str, port: int, workers: int) -> int:
    try:
        settings, agents = load_configuration()
    except ConfigurationError as exc:
        print(logs.startup_line(f"invalid configuration: {exc}"), file=sys.stderr, flush=True)
        return INVALID_CONFIGURATION
    asyncio.run(agents.aclose())  # each worker builds its own
    logs.configure(settings.log_level, settings.log_format)
    address = f"http://{host}:{port}"
    lock = InstanceLock(settings.data_dir)
    try:
        lock.acquire(address)
    except DataDirInUseError as exc:
        log.error("%s", exc)
        return DATA_DIR_IN_USE
    try:
        return _serve_locked(settings, host, port, workers)
    finally:
        lock.release()


def _serve_locked(settings: Settings, host: str, port: int, workers: int) -> int:
    embedded: RedisServer | None = None
    if settings.redis_url is None:
        embedded = RedisServer(settings.data_dir / "redis").start()
        # The workers are new processes that read their settings from the environment.
        os.environ["LEASEGATE_REDIS_URL"] = embedded.url
        log.info(
            "embedded redis-server on 127.0.0.1:%d, data in %s", embedded.port, embedded.data_dir
        )
    try:
        _prepare_metrics_dir(settings.data_dir / "metrics")
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
        refusal = settings.data_dir / "refused-start"
        refusal.unlink(missing_ok=True)  # this instance's lock is held: no one else's file
        os.environ[REFUSAL_ENV] = str(refusal.resolve())
        config = uvicorn.Config(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=logs.uvicorn_log_config(settings.log_format) or LOGGING_CONFIG,
            log_level=settings.log_level.lower(),
            # Open requests (a ?wait, an event stream) get as long as the runs do.
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
        )
        return _run(config, settings.shutdown_grace_seconds)
    finally:
        (settings.data_dir / "refused-start").unlink(missing_ok=True)
        if embedded is not None:
            embedded.stop()
            log.info("embedded redis-server stopped")


def _announce(config: uvicorn.Config) -> None:
    host, port = config.host, config.port
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    log.info("listening on http://%s:%d with %d worker(s)", host, port, config.workers)
    log.info("try   curl -s http://%s:%d/readyz", shown_host, port)


def _run(config: uvicorn.Config, grace: float) -> int:
    if config.workers > 1:
        sockets = [config.bind_socket()]  # a port in use ends it here, exit code 3
        _announce(config)
        supervisor = Supervisor(config, sockets, grace)
        supervisor.run()
        return STARTUP_FAILURE if supervisor.failed else 0
    # One worker, in this process: uvicorn's server handles Ctrl-C, then raises the signal
    # again once it has stopped; SIGTERM then ends here the way Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    _announce(config)
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else STARTUP_FAILURE


class Supervisor(Multiprocess):
    """uvicorn's multiprocess supervisor, which says what a stop will wait for, and tells
    whether it stopped because a worker could not start."""

    def __init__(self, config: uvicorn.Config, sockets: list[Any], grace: float) -> None:
        super().__init__(config, sockets)
        self._grace = grace
        self._stopping = False

    @property
    def failed(self) -> bool:
        return any(process.exitcode == STARTUP_FAILURE for process in self.processes)

    def handle_int(self) -> None:
        self._announce_stop("SIGINT")
        super().handle_int()

    def handle_term(self) -> None:
        self._announce_stop("SIGTERM")
        super().handle_term()

    def _announce_stop(self, signal_name: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.warning(
            "%s: stopping; each worker lets its runs in flight finish for up to %gs "
            "(LEASEGATE_SHUTDOWN_GRACE_SECONDS), then interrupts them",
            signal_name,
            self._grace,
        )


def _prepare_metrics_dir(folder: Path) -> None:
    """Workers share their metrics through files here (prometheus-client's multiprocess
    mode); emptied at each start so that a previous run's counts do not add up."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
