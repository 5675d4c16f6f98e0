"""The Lua scripts behind the fenced lease, and the one place their result codes become errors.

Each script is a constant with its contract. They are registered once per Redis client
in the application's lifespan (`LeaseScripts.register`); redis-py's Script object runs
EVALSHA and reloads the script by itself on NOSCRIPT, e.g. after a Redis restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Self

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from app.errors import LeaseNotOwnedError
from app.redis import guarded


class Code(IntEnum):
    """Result codes shared by every lease script."""

    OK = 0
    HELD = 1
    NOT_OWNED = 2


# KEYS[1] lease key, KEYS[2] fence counter key
# ARGV[1] token, ARGV[2] ttl in milliseconds
# Returns {OK, fence} when granted: the key is set to the token with the ttl and the fence
# counter is bumped, in one step; {HELD, pttl} when another token holds the lease.
ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('INCR', KEYS[2])}
end
return {1, redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] lease key
# ARGV[1] token, ARGV[2] ttl in milliseconds
# Returns OK after resetting the ttl, NOT_OWNED (key untouched) when the token is not the holder's.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
return 2
"""

# KEYS[1] lease key
# ARGV[1] token, ARGV[2] release channel
# Returns OK after deleting the key and announcing the release on the channel, so that a
# waiter wakes at once; NOT_OWNED (key untouched, nothing announced) otherwise.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '1')
  return 0
end
return 2
"""


@dataclass(frozen=True, slots=True)
class LockScripts:
    """A lock's three scripts registered on one client: the lease's (below) and the
    capacity slots' (`app.locks.slot_scripts.SlotScripts`)."""

    acquire: AsyncScript
    renew: AsyncScript
    release: AsyncScript

    @classmethod
    def of(cls, redis: Redis, acquire: str, renew: str, release: str) -> Self:
        return cls(
            acquire=redis.register_script(acquire),
            renew=redis.register_script(renew),
            release=redis.register_script(release),
        )

    def all(self) -> list[AsyncScript]:
        return [self.acquire, self.renew, self.release]


class LeaseScripts(LockScripts):
    """The lease's scripts above."""

    __slots__ = ()

    @classmethod
    def register(cls, redis: Redis) -> LeaseScripts:
        return cls.of(redis, ACQUIRE, RENEW, RELEASE)


async def call(script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run a script; an unreachable Redis becomes RedisUnavailableError."""
    return await guarded(script(keys=list(keys), args=list(args)))


def check(code: int, key: str) -> None:
    """The one place where a script's result code becomes an exception."""
    if code == Code.OK:
        return
    if code == Code.NOT_OWNED:
        raise LeaseNotOwnedError(key)
    raise RuntimeError(f"unexpected lease script code {code} for {key!r}")
