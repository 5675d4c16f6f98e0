"""Many OS processes contending for the slots of one capped resource, and the checker.

Each holder records (fence, start, end) with the system-wide monotonic clock, `start`
after the grant and `end` before the release, so with a correct semaphore no instant is
inside more than `cap` intervals.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

from app.locks.slot_scripts import ACQUIRE, Claim, SlotScripts
from app.locks.slots import SlotManager
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from app.settings import Settings

RESOURCE = "a:contended"

# The broken variant: the grant ignores the cap (as a check-then-set done in two steps
# by many workers at once would).
BROKEN_ACQUIRE = ACQUIRE.replace(
    "local chosen = choose(cap - redis.call('ZCARD', KEYS[1]))", "local chosen = choose(1000)"
)


def contend(url: str, cap: int, duration: float, out: str, broken: bool, barrier: Barrier) -> None:
    """Entry point of one contending process."""
    holds = asyncio.run(_contend(url, cap, duration, broken, barrier))
    Path(out).write_text(json.dumps(holds))


async def _contend(
    url: str, cap: int, duration: float, broken: bool, barrier: Barrier
) -> list[list[float]]:
    redis = create_redis(Settings(redis_url=url))
    scripts = SlotScripts.register(redis)
    if broken:
        scripts = SlotScripts(redis.register_script(BROKEN_ACQUIRE), scripts.renew, scripts.release)
    hub = PubSubHub(redis)
    hub.start()
    manager = SlotManager(redis, scripts, hub, ttl=2.0, heartbeat_interval=0.5)
    holds: list[list[float]] = []
    barrier.wait()
    deadline = time.monotonic() + duration
    n = 0
    try:
        while time.monotonic() < deadline:
            n += 1
            claim = Claim(f"run-{random.getrandbits(48):x}", f"t{n % 3}", "w")
            slot = await manager.acquire(RESOURCE, cap, claim)
            start = time.monotonic()
            await asyncio.sleep(random.uniform(0.0005, 0.004))
            holds.append([slot.fence, start, time.monotonic()])
            await manager.release(slot)
    finally:
        await hub.close()
        await redis.aclose()
    return holds


def load_holds(paths: list[Path]) -> list[tuple[int, float, float]]:
    return [(int(f), s, e) for path in paths for f, s, e in json.loads(path.read_text())]


def most_at_once(holds: list[tuple[int, float, float]]) -> int:
    """The largest number of holds that overlap at one instant (an end before a start at
    the same instant)."""
    events = sorted([(s, 1) for _, s, _ in holds] + [(e, -1) for _, _, e in holds])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
