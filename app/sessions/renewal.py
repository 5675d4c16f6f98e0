"""One heartbeat per worker for every session lease it holds, renewed in batches.

Each interval, one script renews up to `BATCH` leases (on a cluster, where a script keeps
to one slot, one call per lease, sent together). Each lease is still checked by its own
token; a lease found taken is lost at once, and one whose renewals failed until it could
expire in Redis (last successful send + TTL - margin) is lost before that instant (fail
closed), so two holders never run one session at once. Losing a lease stops its run.

The same call reads each session's pending stop request, so a stop whose pub/sub message
was lost is honoured within one interval, and confirms that a run's agent started (a
new run is confirmed `CONFIRM_DELAY` after it starts): a run whose holder dies before that
is started again by the next holder instead of ending `lost`, since nothing of it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from app.errors import LeaseLostError, RedisUnavailableError
from app.locks import Lease
from app.metrics import Metrics
from app.redis import as_text, is_cluster
from app.sessions.lua import Code, Limits, Script
from app.sessions.ref import SessionRef
from app.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BATCH = 250
CONFIRM_DELAY = 0.05

# KEYS: for each session, its lease, state, runs and order
# ARGV: for each session, the holder's token and the run whose start to confirm ('' none)
# Returns, for each session in turn, five values: {OK, stop run id, stop reason, active
#   run id, how many messages were steered into it} with the lease's TTL reset and the
#   session's data kept (its fence and the records of its runs must not expire while it
#   is held), or {NOT_OWNED, '', '', '', '0'} when the token no longer holds the lease
#   (nothing written).
RENEW = """
local function main()
  local out = {}
  for i = 1, #KEYS / 4 do
    local lease, state = KEYS[i * 4 - 3], KEYS[i * 4 - 2]
    local token, confirm = ARGV[i * 2 - 1], ARGV[i * 2]
    if redis.call('GET', lease) ~= token then
      append(out, {NOT_OWNED, '', '', '', '0'})
    else
      redis.call('PEXPIRE', lease, LEASE_TTL_MS)
      for k = i * 4 - 2, i * 4 do redis.call('PEXPIRE', KEYS[k], RETENTION_MS) end
      local found = redis.call('HMGET', state, 'active_run', 'stop_run', 'stop', 'steered')
      if confirm ~= '' and found[1] == confirm then
        redis.call('HSET', state, 'confirmed', confirm)
      end
      append(out, {OK, found[2] or '', found[3] or ''})
      append(out, {found[1] or '', found[4] or '0'})
    end
  end
  return out
end
"""

OnStop = Callable[[str, str], None]
OnLost = Callable[[LeaseLostError], None]
OnSteered = Callable[[str, int], None]
Renewed = tuple[Code, str, str, str, int]
"""A renewal's answer: code, stop run, stop reason, active run, messages steered into it."""


@dataclass(eq=False)
class Held:
    """A session lease this worker holds, as the renewer sees it."""

    session: SessionRef
    lease: Lease
    on_stop: OnStop
    on_lost: OnLost
    confirm: str = ""
    lost: LeaseLostError | None = field(default=None)
    on_steered: OnSteered | None = None
    """Told the active run and how many messages were steered into it, at each renewal."""


class Renewals:
    def __init__(self, redis: Redis, limits: Limits, *, interval: float, metrics: Metrics) -> None:
        self._redis = redis
        self._script = Script(redis, RENEW, limits, name="renew")
        self._interval = interval
        self._metrics = metrics
        self._held: set[Held] = set()
        self._soon = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def scripts(self) -> list[Script]:
        return [self._script]

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="session-renewals")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            await cancel_and_wait(self._task)

    def add(self, held: Held) -> None:
        self._held.add(held)

    def discard(self, held: Held) -> None:
        self._held.discard(held)

    def confirm(self, held: Held, run_id: str) -> None:
        """Confirm soon that `run_id`'s agent started (if it is still running then)."""
        held.confirm = run_id
        loop = asyncio.get_running_loop()
        loop.call_later(CONFIRM_DELAY, self._confirm_due, held, run_id)

    def _confirm_due(self, held: Held, run_id: str) -> None:
        if held in self._held and held.confirm == run_id:
            self._soon.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while not self._closed:
            pause = self._interval - (loop.time() - last_full)
            if self._held:  # wake up in time to stop a run before its lease could expire
                earliest = min(h.lease.valid_until - h.lease.ttl / 5 for h in self._held)
                pause = min(pause, earliest - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(pause, 0.0)):
                    await self._soon.wait()
            self._soon.clear()
            full = loop.time() - last_full >= self._interval
            now = loop.time()
            due = [
                h
                for h in self._held
                if full or h.confirm or now >= h.lease.valid_until - h.lease.ttl / 5
            ]
            if full:
                last_full = loop.time()
            try:
                if not await self.renew(due):
                    last_full -= self._interval * 2 / 3  # failed: try again a third sooner
            except Exception:  # never die silently while runs go on
                log.exception("session renewals: unexpected failure")

    async def renew(self, entries: list[Held]) -> bool:
        """Renew `entries` now; False when Redis could not be reached."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        live = []
        for held in entries:
            if held.lost is None and held in self._held:
                if now >= held.lease.valid_until - held.lease.ttl / 5:
                    self._lose(
                        held, "unreachable", "Redis unreachable until the lease could expire"
                    )
                else:
                    live.append(held)
        if not live:
            return True
        budget = min(h.lease.valid_until - h.lease.ttl / 5 for h in live) - now
        try:
            async with asyncio.timeout(budget):
                replies = await self._call(live)
        except (RedisUnavailableError, TimeoutError) as exc:
            self._metrics.lease_renewals.labels("error").inc(len(live))
            log.warning("session renewals failed for %d lease(s), retrying: %r", len(live), exc)
            return False
        for held, (code, stop_run, reason, active, steered) in zip(live, replies, strict=True):
            self._settle(held, code, stop_run, reason, now)
            if code == Code.OK and steered and held.on_steered is not None:
                held.on_steered(active, steered)
        return True

    def _settle(self, held: Held, code: Code, stop_run: str, reason: str, sent: float) -> None:
        if held not in self._held:
            return  # released while the renewal was on its way: its answer means nothing now
        if code == Code.NOT_OWNED:
            self._metrics.lease_renewals.labels("not_owned").inc()
            self._lose(held, "taken", "the lease expired or was taken or reset")
            return
        self._metrics.lease_renewals.labels("ok").inc()
        held.lease.valid_until = sent + held.lease.ttl
        if held.confirm:
            held.confirm = ""
        if stop_run:
            held.on_stop(stop_run, reason)

    async def _call(self, live: list[Held]) -> list[Renewed]:
        if is_cluster(self._redis):
            replies = await asyncio.gather(*(self._batch([h]) for h in live))
        else:
            chunks = [live[i : i + BATCH] for i in range(0, len(live), BATCH)]
            replies = await asyncio.gather(*(self._batch(chunk) for chunk in chunks))
        return [item for reply in replies for item in reply]

    async def _batch(self, chunk: list[Held]) -> list[Renewed]:
        keys: list[str] = []
        args: list[Any] = []
        for held in chunk:
            session = held.session.keys
            keys += [session.lease.lease, session.state, session.runs, session.order]
            args += [held.lease.token, held.confirm]
        flat = await self._script(keys, args)
        return [
            (
                Code(flat[i]),
                as_text(flat[i + 1]),
                as_text(flat[i + 2]),
                as_text(flat[i + 3]),
                int(flat[i + 4]),
            )
            for i in range(0, len(flat), 5)
        ]

    def _lose(self, held: Held, reason: str, detail: str) -> None:
        held.lost = LeaseLostError(held.lease.key, held.lease.fence, detail)
        self._metrics.lease_losses.labels(reason).inc()
        log.error(
            "lease %s (fence %d) lost: %s; stopping the guarded work",
            held.lease.key,
            held.lease.fence,
            detail,
        )
        self._held.discard(held)
        held.on_lost(held.lost)
