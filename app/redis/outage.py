"""Telling an unreachable Redis (retry later: 503) from a bug, in one place; and saying
so in the log once in a while, not at every failed call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.errors import RedisUnavailableError

T = TypeVar("T")


def _unreachable(exc: BaseException) -> bool:
    """A Redis error that means "not reachable now", not a bug: retry later (503)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return True
    # A cluster that lost a primary, or is moving slots under a multi-key script.
    if isinstance(exc, ClusterDownError | TryAgainError):
        return True
    # "Redis Cluster cannot be connected", or no node serves a slot; not the client's
    # refusal of a command (e.g. keys of two slots), which is a bug to surface.
    if isinstance(exc, RedisClusterException):
        return isinstance(exc, SlotNotCoveredError) or isinstance(
            exc.__cause__, RedisConnectionError | RedisTimeoutError | OSError
        )
    return False


async def guarded(awaitable: Awaitable[T], timeout: float | None = None) -> T:
    """Await a Redis call; an unreachable Redis becomes RedisUnavailableError, and so does
    one that has not answered within `timeout` seconds, the client's own re-sends included
    (a request must not outlive the Redis timeout by the client's retries)."""
    try:
        if timeout is None:
            return await awaitable
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError as exc:
        raise RedisUnavailableError(f"Redis did not answer within {timeout:g} s") from exc
    except Exception as exc:
        if _unreachable(exc):
            raise RedisUnavailableError(
                f"Redis could not be reached ({type(exc).__name__})"
            ) from exc
        raise


def as_text(value: object) -> str:
    """A Redis reply value (bytes, or already text) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def redacted(url: str) -> str:
    """A Redis URL fit for a log line: any password replaced by `***` (in the user info,
    and the `password` / `sentinel_password` query parameters)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"{user}@{hosts}"
    query = "&".join(
        f"{name}=***" if name.lower() in SECRET_PARAMETERS else f"{name}={value}"
        for name, value in (pair.partition("=")[::2] for pair in parts.query.split("&") if pair)
    )
    # Not urlunsplit, which writes `unix:/path` for `unix:///path`.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


SECRET_PARAMETERS = frozenset({"password", "sentinel_password"})


def _redis_failure(record: logging.LogRecord) -> BaseException | None:
    """The unreachable-Redis error a log record is about, if it is about one."""
    candidates: list[object] = []
    if record.exc_info and record.exc_info[1] is not None:
        candidates.append(record.exc_info[1])
    if isinstance(record.args, tuple):
        candidates.extend(record.args)
    for candidate in candidates:
        if isinstance(candidate, RedisUnavailableError) or (
            isinstance(candidate, BaseException) and _unreachable(candidate)
        ):
            return candidate
    return None


class OutageLog(logging.Filter):
    """While Redis is unreachable every part of a worker that uses it fails and says so (the
    pub/sub reader several times a second); this lets through one WARNING per `interval`
    seconds, naming the Redis (its password redacted) and how many like it were held back.

    Installed on leasegate's log handler, so it sees every warning of the process; errors
    (a lease lost, a run failed) always pass.
    """

    def __init__(
        self, redis_url: str, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._address = redacted(redis_url)
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            return True
        failure = _redis_failure(record)
        if failure is None:
            return True
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._held_back += 1
            return False
        held_back, self._held_back, self._last = self._held_back, 0, now
        try:
            said = record.getMessage()
        except (TypeError, ValueError):  # a malformed call is logging's to report
            return True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "Redis at %s is unreachable (%s), retrying: %s%s"
        record.args = (
            self._address,
            type(failure).__name__,
            said,
            f" ({held_back} more like it in the last {self._interval:g} s not shown)"
            if held_back
            else "",
        )
        record.exc_info = record.exc_text = None
        return True


def install_outage_log(redis_url: str, interval: float) -> None:
    """Put one OutageLog (replacing an earlier one) on leasegate's log handler (the one
    app.logs.configure installed; other handlers, such as a test's, see every record)."""
    for handler in logging.getLogger().handlers:
        if not getattr(handler, "_leasegate", False):
            continue
        for old in [f for f in handler.filters if isinstance(f, OutageLog)]:
            handler.removeFilter(old)
        handler.addFilter(OutageLog(redis_url, interval))
