"""`leasegate serve`: run the service, with an embedded redis-server when none is configured."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from app.errors import ConfigurationError
from app.main import load_configuration
from app.redis.server import RedisServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="leasegate")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "serve":
        run_serve(args.host, args.port, args.workers)


INVALID_CONFIGURATION = 2
"""Exit code of `leasegate serve` when the settings or the agents file are not valid."""


def run_serve(host: str, port: int, workers: int) -> None:
    # Checked here, before Redis or any worker starts: one message and exit 2, instead of
    # workers that each fail on the same configuration.
    try:
        settings, agents = load_configuration()
    except ConfigurationError as exc:
        print(f"leasegate: invalid configuration: {exc}", file=sys.stderr, flush=True)
        sys.exit(INVALID_CONFIGURATION)
    asyncio.run(agents.aclose())  # each worker builds its own
    embedded: RedisServer | None = None
    if settings.redis_url is None:
        embedded = RedisServer(settings.data_dir / "redis").start()
        # The workers are new processes that read their settings from the environment.
        os.environ["LEASEGATE_REDIS_URL"] = embedded.url
        print(
            f"leasegate: embedded redis-server on 127.0.0.1:{embedded.port}, "
            f"data in {embedded.data_dir}",
            flush=True,
        )
    _prepare_metrics_dir(settings.data_dir / "metrics")
    # SIGTERM must end uvicorn's supervisor the way Ctrl-C does, so the finally below runs.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(
        f"leasegate: listening on http://{host}:{port} with {workers} worker(s)\n"
        f"leasegate: try   curl -s http://{shown_host}:{port}/readyz",
        flush=True,
    )
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level.lower(),
        )
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
            print("leasegate: embedded redis-server stopped", flush=True)


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
