"""Scheduled executions: a scheduler's execution id maps to exactly one run.

The first call for an execution id claims it (SET NX) with a fingerprint of its request;
every later call, concurrent or after completion, finds the claim, and is refused if its
request differs. The run itself is created by the session's admission under an
idempotency key derived from the execution, so however many calls race past the claim,
one run is created, and a crash between the claim and the admission is repaired by the
scheduler's retry.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from app.errors import ExecutionNotFoundError, IdempotencyConflictError
from app.keys import execution_idempotency_key, execution_key
from app.redis import as_text, guarded


@dataclass(frozen=True, slots=True)
class Execution:
    execution_id: str
    tenant: str
    session_id: str
    fingerprint: str
    idempotency_key: str

    @property
    def run_idempotency_key(self) -> str:
        return f"exec:{self.idempotency_key}"


class ExecutionStore:
    def __init__(self, redis: Redis, *, retention_seconds: float) -> None:
        self._redis = redis
        self._retention_ms = max(1, round(retention_seconds * 1000))

    async def claim(self, execution: Execution) -> Execution:
        """The execution as first claimed: `execution` itself, or an earlier claim.

        Its idempotency key is claimed first (SET NX, one key: atomic on any topology): a
        key already used with another execution id is an IdempotencyConflictError, with
        nothing written, instead of the other execution's run."""
        await self._claim_idempotency_key(execution)
        key = execution_key(execution.execution_id)
        record = json.dumps(asdict(execution))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(key, record, nx=True, px=self._retention_ms)
            pipe.get(key)
            _, stored = await guarded(pipe.execute())
        return Execution(**json.loads(stored))

    async def _claim_idempotency_key(self, execution: Execution) -> None:
        key = execution_idempotency_key(execution.idempotency_key)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(key, execution.execution_id, nx=True, px=self._retention_ms)
            pipe.get(key)
            _, owner = await guarded(pipe.execute())
        if owner is not None and as_text(owner) != execution.execution_id:
            raise IdempotencyConflictError(
                f"the Idempotency-Key was already used with execution {as_text(owner)!r}, "
                f"not {execution.execution_id!r}"
            )

    async def get(self, execution_id: str) -> Execution:
        stored = await guarded(self._redis.get(execution_key(execution_id)))
        if stored is None:
            raise ExecutionNotFoundError(execution_id)
        return Execution(**json.loads(stored))
