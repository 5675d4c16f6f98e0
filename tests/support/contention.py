"""Many OS processes contending for a few leases, and the checker of what they recorded.

Each holder records (key, fence, start, end) with the system-wide monotonic clock, taking
`start` after the grant and `end` before the release, so on a correct lease the intervals
of one key can never overlap.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path

from app.errors import LeaseTimeoutError
from app.locks import LeaseManager, LeaseScripts
from app.metrics import Metrics
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from app.settings import Settings

# The broken variant: SET without NX, so every contender is "granted" the lease.
ACQUIRE_WITHOUT_NX = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0, redis.call('INCR', KEYS[2])}
"""


@dataclass(frozen=True, slots=True)
class Hold:
    key: str
    fence: int
    start: float
    end: float


def contend(
    url: str, keys: list[str], duration: float, out: str, broken: bool, barrier: Barrier
) -> None:
    """Entry point of one contending process."""
    holds = asyncio.run(_contend(url, keys, duration, broken, barrier))
    Path(out).write_text(json.dumps([[h.key, h.fence, h.start, h.end] for h in holds]))


async def _contend(
    url: str, keys: list[str], duration: float, broken: bool, barrier: Barrier
) -> list[Hold]:
    redis = create_redis(Settings(redis_url=url))
    scripts = LeaseScripts.register(redis)
    if broken:
        scripts = LeaseScripts(
            redis.register_script(ACQUIRE_WITHOUT_NX), scripts.renew, scripts.release
        )
    wakeups = PubSubHub(redis)
    wakeups.start()
    manager = LeaseManager(
        redis, scripts, wakeups, ttl=2.0, heartbeat_interval=0.5, metrics=Metrics()
    )
    holds: list[Hold] = []
    barrier.wait()
    deadline = time.monotonic() + duration
    try:
        while time.monotonic() < deadline:
            key = random.choice(keys)
            try:
                async with manager.hold(key, timeout=1.0) as lease:
                    start = time.monotonic()
                    await asyncio.sleep(random.uniform(0.0005, 0.003))
                    holds.append(Hold(key, lease.fence, start, time.monotonic()))
            except LeaseTimeoutError:
                continue
    finally:
        await wakeups.close()
        await redis.aclose()
    return holds


def load_holds(paths: list[Path]) -> list[Hold]:
    return [Hold(*row) for path in paths for row in json.loads(path.read_text())]


def violations(holds: list[Hold]) -> list[str]:
    """Overlapping holds of one key, and fences that do not rise in start order."""
    found = []
    by_key: dict[str, list[Hold]] = defaultdict(list)
    for hold in holds:
        by_key[hold.key].append(hold)
    for key, key_holds in by_key.items():
        key_holds.sort(key=lambda h: h.start)
        for before, after in itertools.pairwise(key_holds):
            if after.start < before.end:
                found.append(
                    f"{key}: fence {after.fence} started before fence {before.fence} ended"
                )
            if after.fence <= before.fence:
                found.append(f"{key}: fence {after.fence} started after fence {before.fence}")
    return found
