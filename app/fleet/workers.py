"""The worker registry: every worker says, every few seconds, that it lives and what it holds.

Each heartbeat writes the worker's record (`worker_key`) with a time to live of
`MISSED_BEATS` heartbeats and scores the worker in the `WORKERS` index. A worker that dies
stops renewing: its record expires, and listings show only workers whose record exists
(index entries left by dead workers are dropped once they are long stale). Only plain
commands that are idempotent (SET, ZADD, ZREM, DEL), so a re-sent command does what the
first did and no script is needed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from redis.asyncio import Redis

from app.errors import RedisUnavailableError
from app.keys import WORKERS, worker_key
from app.redis import as_text, guarded
from app.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MISSED_BEATS = 3
"""A record outlives its heartbeat this many times over: one late beat is no death."""
STALE_INDEX_BEATS = 30
"""Index entries this many heartbeats old whose record is gone are dropped."""


def local_worker_id() -> str:
    """This process as the holder field of a session names it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def package_version() -> str:
    try:
        return metadata.version("leasegate")
    except metadata.PackageNotFoundError:
        return "unknown"


class WorkerRegistry:
    def __init__(
        self,
        redis: Redis,
        *,
        worker_id: str,
        interval: float,
        held: Callable[[], list[str]],
        finished: Callable[[], int],
        timeout: float | None = None,
    ) -> None:
        self._redis = redis
        self.worker_id = worker_id
        self._interval = interval
        self._ttl_ms = max(1, round(interval * MISSED_BEATS * 1000))
        self._held = held
        self._finished = finished
        self._timeout = timeout
        self._started_ms = _now_ms()
        self._version = package_version()
        self._last: tuple[float, int] = (time.monotonic(), finished())
        self._rate = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failing = False

    def record(self) -> dict[str, Any]:
        """What this worker's heartbeat says of it now."""
        now, finished = time.monotonic(), self._finished()
        then, before = self._last
        if now - then > 0:
            self._rate = max(0, finished - before) / (now - then)
        self._last = (now, finished)
        host, _, pid = self.worker_id.rpartition(":")
        return {
            "worker": self.worker_id,
            "host": host,
            "pid": int(pid) if pid.isdigit() else None,
            "version": self._version,
            "started_at": _iso(self._started_ms),
            "last_seen": _iso(_now_ms()),
            "runs": sorted(self._held()),
            "runs_finished": finished,
            "runs_per_second": round(self._rate, 3),
            "heartbeat_seconds": self._interval,
        }

    async def beat(self) -> None:
        record = self.record()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(worker_key(self.worker_id), json.dumps(record), px=self._ttl_ms)
            pipe.zadd(WORKERS, {self.worker_id: _now_ms()})
            await guarded(pipe.execute(), self._timeout)

    async def alive(self) -> list[dict[str, Any]]:
        """The workers whose record has not expired, oldest first, each with `seen_ms_ago`."""
        horizon = _now_ms() - self._ttl_ms * STALE_INDEX_BEATS
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(WORKERS, "-inf", horizon)
            pipe.zrange(WORKERS, 0, -1)
            _, members = await guarded(pipe.execute(), self._timeout)
        ids = [as_text(m) for m in members]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.get(worker_key(worker_id))
            raws = await guarded(pipe.execute(), self._timeout)
        now = datetime.now(UTC)
        workers = []
        for raw in raws:
            if raw is None:
                continue
            record: dict[str, Any] = json.loads(raw)
            seen = datetime.fromisoformat(record["last_seen"])
            record["seen_ms_ago"] = max(0, round((now - seen).total_seconds() * 1000))
            workers.append(record)
        workers.sort(key=lambda w: (w["started_at"], w["worker"]))
        return workers

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="worker-heartbeat")

    async def close(self) -> None:
        """Stop beating and leave the registry at once (a clean exit is no death)."""
        self._closed = True
        if self._task is not None:
            await cancel_and_wait(self._task)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(worker_key(self.worker_id))
                pipe.zrem(WORKERS, self.worker_id)
                await guarded(pipe.execute(), self._timeout)
        except RedisUnavailableError:
            pass  # the record expires by itself

    async def _loop(self) -> None:
        while not self._closed:
            try:
                await self.beat()
                if self._failing:
                    log.info("worker heartbeat: registered again")
                self._failing = False
            except RedisUnavailableError as exc:
                if not self._failing:
                    log.warning("worker heartbeat failed: %s", exc)
                self._failing = True
            await asyncio.sleep(self._interval)


def _now_ms() -> int:
    return round(time.time() * 1000)


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")
