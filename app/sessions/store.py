"""Redis I/O for sessions and runs: each method one round trip, each change one script.

The one place where session script codes become errors is `_admission`/`cancel` here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.agents import Turn
from app.connections import guarded
from app.errors import (
    LeaseNotOwnedError,
    QueueFullError,
    RunNotFoundError,
    RunTerminalError,
    SessionBusyError,
    SessionNotFoundError,
)
from app.keys import CONTROL_CHANNEL, FINISHED_CHANNEL, SessionKeys, session_keys
from app.locks import Lease
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


@dataclass(frozen=True, slots=True)
class Finished:
    """The outcome of one run, as its holder writes it."""

    status: RunStatus
    output: str = ""
    error: str = ""
    subscription: str = ""


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
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._ttl_ms = _ms(lease_ttl)
        self.lease_ttl = lease_ttl
        self._retention_ms = _ms(retention_seconds)
        self._queue_cap = queue_cap
        self.worker = worker

    async def admit(self, session: SessionRef, new: NewRun) -> Admission:
        keys = session.keys
        run_id = new_run_id(session.tenant, session.session_id)
        token = secrets.token_hex(16)
        idem_key = keys.idempotency(_digest(new.idempotency_key or ""))
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
        reply = await guarded(
            self._scripts.admit(
                keys=[keys.lease.lease, keys.lease.fence, keys.state, keys.queue, keys.runs,
                      keys.run(run_id), idem_key],
                args=[token, self._ttl_ms, keys.prefix, run_id, new.busy_policy.value,
                      self._queue_cap, "1" if new.idempotency_key else "0", self._retention_ms,
                      self.worker, FINISHED_CHANNEL, CONTROL_CHANNEL, session.resource,
                      *[x for pair in record.items() for x in pair]],
            )
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
            existing = await self.get_run(session, _text(reply[1]))
            return Admission(existing.run_id, existing.status, 0, duplicate=True)
        if code == SessionCode.REJECTED:
            raise SessionBusyError(session.session_id, _text(reply[1]) or None)
        if code == SessionCode.QUEUE_FULL:
            raise QueueFullError(session.session_id, self._queue_cap)
        raise RuntimeError(f"unexpected admission code {code!r}")

    async def finish(
        self, session: SessionRef, lease: Lease, run: Run, outcome: Finished, *, release: bool
    ) -> Run | None:
        """Record the outcome and take the next queued run (renewing the lease), or release.

        Returns the next run, or None once the session is released. Raises
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
                      outcome.subscription],
            )
        )  # fmt: skip
        code = SessionCode(reply[0])
        if code == SessionCode.STALE:
            raise LeaseNotOwnedError(lease.key)
        if code == SessionCode.NEXT:
            lease.valid_until = sent + lease.ttl
            return _run_from_flat(reply[1:])
        return None

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
            return _text(reply[1]), _text(reply[2])
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
            raise RunTerminalError(run_id, _text(reply[1]))
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
        return [_text(run_id) for run_id in reply[1:]]

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
        return int(reply[1]), [_text(run_id) for run_id in reply[2:]]

    def locate(self, run_id: str, tenant: str) -> SessionRef:
        run_tenant, session_id = locate_run(run_id)
        if run_tenant != tenant:
            raise RunNotFoundError(run_id)
        return SessionRef.of(run_tenant, session_id)

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
            queued=[_text(q) for q in queued],
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
                pipe.hgetall(keys.run(_text(run_id)))
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
        return await self.get_run(session, _text(run_id))

    async def transcript_turns(self, session: SessionRef, generation: int) -> list[Turn]:
        turns = await guarded(self._redis.lrange(session.keys.transcript(generation), 0, -1))
        return [Turn(**json.loads(turn)) for turn in turns]


def _run_from_flat(flat: list[Any]) -> Run:
    it = iter(flat)
    return Run.from_hash({_text(k): _text(v) for k, v in zip(it, it, strict=True)})


def _decode(fields: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _turn_json(turn: Turn) -> str:
    return json.dumps({"role": turn.role, "text": turn.text, "run_id": turn.run_id})


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
