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
    redis: Redis,
    standings_script: AsyncScript,
    agent_id: str,
    priority: tuple[str, ...],
    *,
    gated: bool = False,
) -> dict[str, Any]:
    """The assignment, each subscription's standing (state, kind and until of its last
    refusal, refusal counts by kind), the switch count and the last switch; and for an
    agent that reloads, its gate."""
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
    state = {
        "agent_id": agent_id,
        "subscription": current,
        "subscriptions": [
            {"id": sub, "assigned": sub == current} | standings.of(sub).public(standings.now_ms)
            for sub in priority
        ],
        "switch_count": int(fields.get("switch_count") or 0),
        "last_switch": last,
    }
    if gated:
        state["gate"] = await gate_state(redis, agent_id, standings.now_ms)
    return state


async def gate_state(redis: Redis, agent_id: str, now_ms: int) -> dict[str, Any]:
    """The reload gate: `open` or `closed`, what its holder is doing (`phase`: draining,
    requeueing, reloading, failed; `open` once opened), the switch it is for, the last
    reload failure, and the runs in flight per subscription."""
    keys = agent_keys(agent_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.pttl(keys.gate.lease)
        pipe.hgetall(keys.gate_state)
        pipe.hgetall(keys.inflight)
        pttl, raw_state, raw_inflight = await guarded(pipe.execute())
    fields = {as_text(k): as_text(v) for k, v in raw_state.items()}
    in_flight: dict[str, int] = {}
    for value in raw_inflight.values():
        sub, _, expiry = as_text(value).partition("|")
        if expiry.isdigit() and int(expiry) > now_ms:
            in_flight[sub] = in_flight.get(sub, 0) + 1
    closed = int(pttl) > 0
    return {
        "state": "closed" if closed else "open",
        "phase": fields.get("phase") if closed else "open",
        "from": fields.get("from"),
        "to": fields.get("to"),
        "reason": fields.get("reason"),
        "closed_at": _iso_ms(fields.get("closed_at")),
        "drain_until": _iso_ms(fields.get("drain_until")) if closed else None,
        "expires_in_ms": int(pttl) if closed else None,
        "error": fields.get("error") or None,
        "failed_subscription": fields.get("failed") or None,
        "in_flight": in_flight,
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


def _iso_ms(epoch_ms: str | None) -> str | None:
    if not epoch_ms or not epoch_ms.isdigit():
        return None
    return datetime.fromtimestamp(int(epoch_ms) / 1000, UTC).isoformat(timespec="milliseconds")


def _iso_us(epoch_us: int) -> str:
    return datetime.fromtimestamp(epoch_us / 1_000_000, UTC).isoformat(timespec="milliseconds")
