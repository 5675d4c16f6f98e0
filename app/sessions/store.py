"""Redis I/O for sessions and runs: each method one round trip, each change one script.

The one place where session script codes become errors is `_admission`/`cancel` here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from app.agents import Turn
from app.errors import (
    InvalidKeyError,
    LeaseNotOwnedError,
    QueueFullError,
    RunNotFoundError,
    RunTerminalError,
    SessionBusyError,
    SessionNotFoundError,
)
from app.keys import (
    ACTIVE_SESSIONS,
    CONTROL_CHANNEL,
    FINISHED_CHANNEL,
    WAKE_CHANNEL,
    SessionKeys,
    session_keys,
)
from app.locks import Lease
from app.redis import as_text, guarded, is_cluster
from app.sessions.ids import locate_run, new_run_id
from app.sessions.models import Admission, NewRun, Run, RunStatus, SessionView, StartedHold
from app.sessions.scripts import SessionCode, SessionScripts


@dataclass(frozen=True, slots=True)
class SessionRef:
    tenant: str
    session_id: str
    keys: SessionKeys

    @classmethod
    def of(cls, tenant: str, session_id: str) -> SessionRef:
        return cls(tenant, session_id, session_keys(tenant, session_id))

    @property
    def resource(self) -> str:
        return self.keys.lease.resource

    @property
    def member(self) -> str:
        """The session's entry in the index of sessions with work."""
        return f"{self.tenant}/{self.session_id}"


@dataclass(frozen=True, slots=True)
class AfterFinish:
    """What the holder does next: run `next_run`, or stop (the session was released,
    with `queued` runs left behind when released on shutdown)."""

    next_run: Run | None
    queued: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    """The outcome of one run, as its holder writes it."""

    status: RunStatus
    output: str = ""
    error: str = ""
    subscription: str = ""
    unsent_deltas: str = ""


class SessionStore:
    def __init__(
        self,
        redis: Redis,
        scripts: SessionScripts,
        *,
        lease_ttl: float,
        retention_seconds: float,
        queue_cap: int,
        worker: str,
        retry_lost: bool = False,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._ttl_ms = _ms(lease_ttl)
        self.lease_ttl = lease_ttl
        self._retention_ms = _ms(retention_seconds)
        self._queue_cap = queue_cap
        self.worker = worker
        self._retry_lost = retry_lost

    async def admit(self, session: SessionRef, new: NewRun) -> Admission:
        keys = session.keys
        run_id = new_run_id(session.tenant, session.session_id)
        token = secrets.token_hex(16)
        idem_key = keys.idempotency(_digest(new.idempotency_key) if new.idempotency_key else "")
        record = {
            "run_id": run_id,
            "tenant": session.tenant,
            "session_id": session.session_id,
            "input": new.text,
            "agent_id": new.agent_id,
            "metadata": json.dumps(new.metadata, separators=(",", ":")),
            "busy_policy": new.busy_policy.value,
            "idempotency_key": new.idempotency_key or "",
            "timeout_ms": _ms(new.timeout_seconds) if new.timeout_seconds else "",
        }
        sent = asyncio.get_running_loop().time()
        reply = await self._indexed_admit(
            session,
            keys=[keys.lease.lease, keys.lease.fence, keys.state, keys.queue, keys.runs,
                  keys.run(run_id), idem_key],
            args=[token, self._ttl_ms, keys.prefix, run_id, new.busy_policy.value,
                  self._queue_cap, "1" if new.idempotency_key else "0", self._retention_ms,
                  self.worker, FINISHED_CHANNEL, CONTROL_CHANNEL, session.resource,
                  "1" if self._retry_lost else "0", *[x for pair in record.items() for x in pair]],
        )  # fmt: skip
        code = SessionCode(reply[0])
        if code == SessionCode.STARTED:
            first = _run_from_flat(reply[3:])
            position = int(reply[2])
            hold = StartedHold(token, int(reply[1]), sent, first)
            status = RunStatus.RUNNING if first.run_id == run_id else RunStatus.QUEUED
            return Admission(run_id, status, position, start=hold)
        if code == SessionCode.QUEUED:
            return Admission(run_id, RunStatus.QUEUED, int(reply[1]))
        if code == SessionCode.DUPLICATE:
            existing = await self.get_run(session, as_text(reply[1]))
            return Admission(existing.run_id, existing.status, 0, duplicate=True)
        if code == SessionCode.REJECTED:
            raise SessionBusyError(session.session_id, as_text(reply[1]) or None)
        if code == SessionCode.QUEUE_FULL:
            raise QueueFullError(session.session_id, self._queue_cap)
        raise RuntimeError(f"unexpected admission code {code!r}")

    async def _indexed_admit(self, session: SessionRef, keys: list[str], args: list[Any]) -> Any:
        """Index the session, then admit, in one round trip.

        The index entry is written first: a crash after it leaves an entry the sweeper
        drops; a crash after the admission leaves the session indexed, so it is found.
        """
        index = {session.member: _now_ms()}
        if is_cluster(self._redis):
            # The index and the session live on different nodes, and a cluster pipeline
            # sends to each node at once: index first takes two steps here.
            await guarded(self._redis.zadd(ACTIVE_SESSIONS, index))
            return await guarded(self._scripts.admit(keys=keys, args=args))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(ACTIVE_SESSIONS, index)
            pipe.evalsha(self._scripts.admit.sha, len(keys), *keys, *args)
            _, reply = await guarded(pipe.execute(raise_on_error=False))
        if isinstance(reply, NoScriptError):  # after a Redis restart: load it and run again
            reply = await guarded(self._scripts.admit(keys=keys, args=args))
        elif isinstance(reply, Exception):
            raise reply
        return reply

    async def recover(self, session: SessionRef) -> StartedHold | bool | None:
        """Take over a session whose holder is gone but whose work is not.

        Returns the hold when this worker now holds the session, True while another holder
        has it, None when the session has nothing to do.
        """
        [outcome] = await self.recover_many([session])
        return outcome

    async def recover_many(self, sessions: list[SessionRef]) -> list[StartedHold | bool | None]:
        """`recover` for many sessions, in one round trip where the topology allows."""
        calls = [(s.keys, secrets.token_hex(16)) for s in sessions]
        sent = asyncio.get_running_loop().time()

        def arguments(keys: SessionKeys, token: str) -> tuple[list[str], list[Any]]:
            return (
                [keys.lease.lease, keys.lease.fence, keys.state, keys.queue],
                [token, self._ttl_ms, keys.prefix, self._retention_ms, self.worker,
                 FINISHED_CHANNEL, "1" if self._retry_lost else "0"],
            )  # fmt: skip

        if is_cluster(self._redis) or len(calls) == 1:  # a cluster pipelines no scripts
            replies = [
                await guarded(self._scripts.recover(*arguments(keys, token)))
                for keys, token in calls
            ]
        else:
            replies = await self._pipelined(self._scripts.recover, [arguments(*c) for c in calls])
        outcomes: list[StartedHold | bool | None] = []
        for (_, token), reply in zip(calls, replies, strict=True):
            code = SessionCode(reply[0])
            if code == SessionCode.BUSY:
                outcomes.append(True)
            elif code == SessionCode.IDLE:
                outcomes.append(None)
            else:
                outcomes.append(StartedHold(token, int(reply[1]), sent, _run_from_flat(reply[3:])))
        return outcomes

    async def _pipelined(
        self, script: AsyncScript, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """Run one script many times in one round trip (EVALSHA; loaded first if missing)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            replies: list[Any] = await guarded(pipe.execute(raise_on_error=False))
        if any(isinstance(r, NoScriptError) for r in replies):
            await guarded(self._redis.script_load(script.script))
            return await self._pipelined(script, calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def indexed_sessions(self, offset: int, count: int) -> list[tuple[SessionRef, float]]:
        """Indexed sessions, least recently admitted first, from rank `offset`."""
        entries = cast(
            list[tuple[bytes, float]],
            await guarded(
                self._redis.zrange(ACTIVE_SESSIONS, offset, offset + count - 1, withscores=True)
            ),
        )
        found = []
        for member, score in entries:
            tenant, _, session_id = as_text(member).partition("/")
            try:
                found.append((SessionRef.of(tenant, session_id), score))
            except InvalidKeyError:
                await guarded(self._redis.zrem(ACTIVE_SESSIONS, member))
        return found

    async def forget(self, entries: list[tuple[SessionRef, float]]) -> int:
        """Drop idle sessions from the index, each unless admitted since its `score`."""
        calls = [([ACTIVE_SESSIONS], [session.member, repr(score)]) for session, score in entries]
        if not calls:
            return 0
        if is_cluster(self._redis):
            removed = [await guarded(self._scripts.forget(keys=k, args=a)) for k, a in calls]
        else:
            removed = await self._pipelined(self._scripts.forget, calls)
        return sum(int(r) for r in removed)

    async def finish(
        self, session: SessionRef, lease: Lease, run: Run, outcome: Finished, *, release: bool
    ) -> AfterFinish:
        """Record the outcome and take the next queued run (renewing the lease), or release.

        Raises
        LeaseNotOwnedError when the fence is stale: nothing was written.
        """
        keys = session.keys
        user = _turn_json(Turn("user", run.input, run.run_id))
        assistant = (
            _turn_json(Turn("assistant", outcome.output, run.run_id)) if outcome.output else ""
        )
        sent = asyncio.get_running_loop().time()
        reply = await guarded(
            self._scripts.finish(
                keys=[keys.lease.lease, keys.lease.fence, keys.state, keys.queue,
                      keys.run(run.run_id), keys.transcript(run.generation)],
                args=[lease.token, lease.fence, self._ttl_ms, keys.prefix, run.run_id,
                      outcome.status.value, outcome.output, outcome.error, self._retention_ms,
                      self.worker, user, assistant, "1" if release else "0", FINISHED_CHANNEL,
                      outcome.subscription, outcome.unsent_deltas],
            )
        )  # fmt: skip
        code = SessionCode(reply[0])
        if code == SessionCode.STALE:
            raise LeaseNotOwnedError(lease.key)
        if code == SessionCode.NEXT:
            lease.valid_until = sent + lease.ttl
            return AfterFinish(_run_from_flat(reply[1:]))
        return AfterFinish(None, int(reply[1]))

    async def delta(self, session: SessionRef, lease: Lease, run_id: str, text: str) -> None:
        """Append reply text to the session's event stream; refused for a stale fence."""
        keys = session.keys
        reply = await guarded(
            self._scripts.delta(
                keys=[keys.lease.lease, keys.lease.fence],
                args=[lease.token, lease.fence, keys.prefix, run_id, text],
            )
        )
        if SessionCode(reply[0]) == SessionCode.STALE:
            raise LeaseNotOwnedError(lease.key)

    async def events_after(
        self, session: SessionRef, after: str | None, count: int
    ) -> list[tuple[str, dict[str, str]]]:
        """Entries of the session's event stream after id `after` (all, if None)."""
        start = f"({after}" if after else "-"
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await guarded(self._redis.xrange(session.keys.events, start, "+", count=count)),
        )
        return [(as_text(i), _decode(fields)) for i, fields in entries]

    async def last_event_id(self, session: SessionRef) -> str:
        entries = await guarded(self._redis.xrevrange(session.keys.events, count=1))
        return as_text(entries[0][0]) if entries else "0-0"

    async def require(self, session: SessionRef) -> None:
        if not await guarded(self._redis.exists(session.keys.state)):
            raise SessionNotFoundError(session.session_id)

    async def renew(self, session: SessionRef, lease: Lease) -> tuple[str, str] | None:
        """Renew the session lease; returns (run_id, reason) if the active run must stop."""
        keys = session.keys
        sent = asyncio.get_running_loop().time()
        reply = await guarded(
            self._scripts.renew(
                keys=[keys.lease.lease, keys.state], args=[lease.token, self._ttl_ms, keys.prefix]
            )
        )
        if SessionCode(reply[0]) == SessionCode.NOT_OWNED:
            raise LeaseNotOwnedError(lease.key)
        lease.valid_until = sent + lease.ttl
        if len(reply) == 3:
            return as_text(reply[1]), as_text(reply[2])
        return None

    async def cancel(self, run_id: str, tenant: str) -> bool:
        """Cancel a run. True when it is cancelled now, False when its holder was asked to stop."""
        session = self.locate(run_id, tenant)
        keys = session.keys
        reply = await guarded(
            self._scripts.cancel(
                keys=[keys.run(run_id), keys.queue],
                args=[keys.prefix, run_id, FINISHED_CHANNEL, CONTROL_CHANNEL, session.resource],
            )
        )
        code = SessionCode(reply[0])
        if code == SessionCode.NOT_FOUND:
            raise RunNotFoundError(run_id)
        if code == SessionCode.TERMINAL:
            raise RunTerminalError(run_id, as_text(reply[1]))
        return code == SessionCode.CANCELLED

    async def stop(self, session: SessionRef) -> list[str]:
        keys = session.keys
        reply = await guarded(
            self._scripts.stop(
                keys=[keys.lease.lease, keys.lease.fence, keys.state, keys.queue],
                args=[keys.prefix, FINISHED_CHANNEL, CONTROL_CHANNEL, session.resource],
            )
        )
        if SessionCode(reply[0]) == SessionCode.NOT_FOUND:
            raise SessionNotFoundError(session.session_id)
        return [as_text(run_id) for run_id in reply[1:]]

    async def reset(self, session: SessionRef) -> tuple[int, list[str]]:
        keys = session.keys
        reply = await guarded(
            self._scripts.reset(
                keys=[keys.lease.lease, keys.lease.fence, keys.state, keys.queue],
                args=[keys.prefix, FINISHED_CHANNEL, CONTROL_CHANNEL, session.resource,
                      self._retention_ms],
            )
        )  # fmt: skip
        if SessionCode(reply[0]) == SessionCode.NOT_FOUND:
            raise SessionNotFoundError(session.session_id)
        return int(reply[1]), [as_text(run_id) for run_id in reply[2:]]

    def locate(self, run_id: str, tenant: str) -> SessionRef:
        run_tenant, session_id = locate_run(run_id)
        if run_tenant != tenant:
            raise RunNotFoundError(run_id)
        return SessionRef.of(run_tenant, session_id)

    async def publish_wake(self, payload: str) -> None:
        await guarded(self._redis.publish(WAKE_CHANNEL, payload))

    async def get_run(self, session: SessionRef, run_id: str) -> Run:
        fields = await guarded(self._redis.hgetall(session.keys.run(run_id)))
        if not fields:
            raise RunNotFoundError(run_id)
        return Run.from_hash(_decode(fields))

    async def view(self, session: SessionRef) -> SessionView:
        keys = session.keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.lease.lease)
            pipe.hgetall(keys.state)
            pipe.lrange(keys.queue, 0, -1)
            busy, state, queued = await guarded(pipe.execute())
        state = _decode(state)
        if not state:
            raise SessionNotFoundError(session.session_id)
        active = None
        if state.get("active_run"):
            try:
                active = await self.get_run(session, state["active_run"])
            except RunNotFoundError:
                active = None
        return SessionView(
            session_id=session.session_id,
            busy=bool(busy),
            active_run=active,
            queued=[as_text(q) for q in queued],
            generation=int(state.get("generation") or 1),
        )

    async def list_runs(self, session: SessionRef, offset: int, limit: int) -> list[Run]:
        keys = session.keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.state)
            pipe.zrevrange(keys.runs, offset, offset + limit - 1)
            exists, run_ids = await guarded(pipe.execute())
        if not exists:
            raise SessionNotFoundError(session.session_id)
        if not run_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(keys.run(as_text(run_id)))
            records = await guarded(pipe.execute())
        return [Run.from_hash(_decode(r)) for r in records if r]

    async def transcript(self, session: SessionRef) -> tuple[int, list[dict[str, Any]]]:
        state = _decode(await guarded(self._redis.hgetall(session.keys.state)))
        if not state:
            raise SessionNotFoundError(session.session_id)
        generation = int(state.get("generation") or 1)
        turns = await guarded(self._redis.lrange(session.keys.transcript(generation), 0, -1))
        return generation, [json.loads(turn) for turn in turns]

    async def find_by_idempotency_key(self, session: SessionRef, key: str) -> Run:
        run_id = await guarded(self._redis.get(session.keys.idempotency(_digest(key))))
        if run_id is None:
            raise RunNotFoundError(key)
        return await self.get_run(session, as_text(run_id))

    async def transcript_turns(self, session: SessionRef, generation: int) -> list[Turn]:
        turns = await guarded(self._redis.lrange(session.keys.transcript(generation), 0, -1))
        return [Turn(**json.loads(turn)) for turn in turns]


def _run_from_flat(flat: list[Any]) -> Run:
    it = iter(flat)
    return Run.from_hash({as_text(k): as_text(v) for k, v in zip(it, it, strict=True)})


def _decode(fields: dict[Any, Any]) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in fields.items()}


def _now_ms() -> int:
    return round(time.time() * 1000)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _turn_json(turn: Turn) -> str:
    return json.dumps({"role": turn.role, "text": turn.text, "run_id": turn.run_id})


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
