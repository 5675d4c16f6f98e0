"""What operators read of an agent's subscriptions: its state and its events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from app.keys import agent_keys
from app.redis import as_text, guarded
from app.subscriptions import cooldowns


async def agent_state(
    redis: Redis, standings_script: AsyncScript, agent_id: str, priority: tuple[str, ...]
) -> dict[str, Any]:
    """The assignment, each subscription's standing (state, kind and until of its last
    refusal, refusal counts by kind), the switch count and the last switch."""
    keys = agent_keys(agent_id)
    assignment = await guarded(redis.hgetall(keys.assignment))
    standings = await cooldowns.read(standings_script, keys.refusals)
    fields = {as_text(k): as_text(v) for k, v in assignment.items()}
    current = effective(fields.get("subscription"), priority) if priority else None
    last = None
    if fields.get("last_at"):
        last = {
            "from": fields["last_from"],
            "to": fields["last_to"],
            "at": _iso_us(int(fields["last_at"])),
            "reason": fields["last_reason"],
        }
    return {
        "agent_id": agent_id,
        "subscription": current,
        "subscriptions": [
            {"id": sub, "assigned": sub == current} | standings.of(sub).public(standings.now_ms)
            for sub in priority
        ],
        "switch_count": int(fields.get("switch_count") or 0),
        "last_switch": last,
    }


async def agent_events(redis: Redis, agent_ids: list[str], limit: int) -> list[dict[str, Any]]:
    """The newest events of these agents, newest first."""
    async with redis.pipeline(transaction=False) as pipe:
        for agent_id in agent_ids:
            pipe.xrevrange(agent_keys(agent_id).events, count=limit)
        streams = await guarded(pipe.execute())
    entries = [
        {"id": as_text(entry_id)} | {as_text(k): as_text(v) for k, v in fields.items()}
        for stream in streams
        for entry_id, fields in stream
    ]
    entries.sort(key=lambda e: tuple(int(p) for p in e["id"].split("-")), reverse=True)
    return entries[:limit]


def effective(stored: object, priority: tuple[str, ...]) -> str:
    """The assigned subscription: the stored one if the agent still has it, else the first."""
    text = as_text(stored) if stored else ""
    return text if text in priority else priority[0]


def _iso_us(epoch_us: int) -> str:
    return datetime.fromtimestamp(epoch_us / 1_000_000, UTC).isoformat(timespec="milliseconds")
