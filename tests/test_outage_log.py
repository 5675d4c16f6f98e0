"""The outage log: an unreachable Redis is one warning per interval naming it (password
redacted), however many parts of the worker fail meanwhile; everything else passes."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from app.errors import RedisUnavailableError
from app.redis.outage import OutageLog, redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@db:6379/0", "redis://:***@db:6379/0"),
        ("rediss://user:s3cret@db:6380/2", "rediss://user:***@db:6380/2"),
        ("redis://user@db:6379/0", "redis://user@db:6379/0"),
        ("redis://db:6379/0", "redis://db:6379/0"),
        (
            "redis+sentinel://:s3cret@s1:26379,s2/main?sentinel_password=s3cret",
            "redis+sentinel://:***@s1:26379,s2/main?sentinel_password=***",
        ),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
    ],
)
def test_redacted_hides_every_password(url: str, shown: str) -> None:
    assert redacted(url) == shown
    assert "s3cret" not in redacted(url)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(
    msg: str, *args: object, level: int = logging.WARNING, exc: BaseException | None = None
) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("app.x", level, __file__, 1, msg, args, exc_info)


def test_one_warning_per_interval_with_the_count_of_the_others() -> None:
    clock = Clock()
    outage = OutageLog("redis://:s3cret@db:6379/0", interval=10, clock=clock)
    down = RedisConnectionError("Error 111 connecting")
    first = record("pub/sub: connection failed: %r", down)
    assert outage.filter(first)
    assert first.getMessage() == (
        "Redis at redis://:***@db:6379/0 is unreachable (ConnectionError), retrying: "
        f"pub/sub: connection failed: {down!r}"
    )
    held = [record("sweeper: %s", RedisUnavailableError()) for _ in range(3)]
    clock.now += 9.9
    held.append(record("renewal", exc=down))
    assert not any(outage.filter(r) for r in held)
    clock.now += 0.1
    second = record("sweeper: %s", RedisUnavailableError())
    assert outage.filter(second)
    assert second.getMessage().endswith(
        "sweeper: Redis could not be reached (4 more like it in the last 10 s not shown)"
    )
    assert second.exc_info is None


def test_other_records_pass_untouched() -> None:
    clock = Clock()
    outage = OutageLog("redis://db:6379/0", interval=10, clock=clock)
    assert outage.filter(record("first: %s", RedisUnavailableError()))
    other = record("run %s failed: %s", "r1", "agent error")
    lost = record("lease lost: %s", RedisUnavailableError(), level=logging.ERROR)
    bug = record("unexpected: %s", ValueError("bug"))
    malformed = record("%s %s", RedisUnavailableError())  # logging reports it, not this
    for passing in (other, lost, bug):
        assert outage.filter(passing)
    assert other.getMessage() == "run r1 failed: agent error"
    assert lost.getMessage() == "lease lost: Redis could not be reached"
    assert not outage.filter(malformed)  # within the interval: held back like the others
