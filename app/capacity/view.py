"""What operators see of capacity (GET /internal/capacity): each capped resource's cap, its
holders and its waiters in the order they will be granted (the scripts' own rule: fewest
holders of the waiter's tenant, then highest priority, then earliest)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from redis.asyncio import Redis

from app.capacity.caps import Caps, Need
from app.keys import CAPACITY_TENANTS, slot_keys
from app.redis import as_text, guarded


async def capacity_view(redis: Redis, caps: Caps) -> list[dict[str, Any]]:
    """One entry per capped resource; each resource is read in one round trip."""
    tenants = sorted(as_text(t) for t in await guarded(redis.smembers(CAPACITY_TENANTS)))
    seconds, micros = await guarded(redis.time())
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    return [await _resource(redis, need, now_ms) for need in caps.configured(tenants)]


async def _resource(redis: Redis, need: Need, now_ms: int) -> dict[str, Any]:
    keys = slot_keys(need.resource)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(keys.holders, now_ms + 1, "+inf", withscores=True)
        pipe.hgetall(keys.info)
        pipe.zrangebyscore(keys.waiters, now_ms + 1, "+inf")
        pipe.hgetall(keys.queue)
        held, info, waiting, queue = await guarded(pipe.execute())
    infos = {as_text(k): json.loads(v) for k, v in info.items()}
    holders = []
    for token, expires in held:
        hold = infos.get(as_text(token))
        if hold is not None:
            holders.append(
                {
                    "run_id": hold["run"],
                    "tenant": hold["tenant"],
                    "worker": hold["worker"],
                    "since_ms": hold["since"],
                    "fence": hold["fence"],
                    "expires_in_ms": int(expires) - now_ms,
                }
            )
    entries = {as_text(k): json.loads(v) for k, v in queue.items()}
    live = [entries[as_text(t)] for t in waiting if as_text(t) in entries]
    counts = Counter(h["tenant"] for h in holders)
    return {
        "resource": need.resource,
        "kind": need.kind,
        "name": need.name,
        "cap": need.cap,
        "held": len(holders),
        "waiting": len(live),
        "holders": sorted(holders, key=lambda h: h["since_ms"]),
        "waiters": [
            {
                "run_id": w["run"],
                "tenant": w["tenant"],
                "priority": w["priority"],
                "worker": w["worker"],
                "since_ms": w["since"],
            }
            for w in grant_order(live, counts)
        ],
    }


def grant_order(waiters: list[dict[str, Any]], holders: Counter[str]) -> list[dict[str, Any]]:
    """The waiters in the order slots would go to them if freed one by one."""
    counts = Counter(holders)
    left = list(waiters)
    ordered = []
    while left:
        best = min(left, key=lambda w: (counts[w["tenant"]], -w["priority"], w["seq"]))
        left.remove(best)
        counts[best["tenant"]] += 1
        ordered.append(best)
    return ordered
