"""Endpoints for the scheduler, behind the internal shared secret."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.deps import InternalDep, SessionCall
from app.errors import (
    IdempotencyConflictError,
    MetadataTooLargeError,
    NoticeNotFoundError,
    RunNotFoundError,
)
from app.executions import Execution
from app.routers.models.internal import (
    ExecutionRunOut,
    NoticeRedeliveredOut,
    RedeliveredOut,
    TaskAccepted,
    WebhooksOut,
)
from app.routers.models.params import PLAIN_FLOAT, PLAIN_INT
from app.routers.models.problem import answers
from app.routers.schemas import MAX_START_WITHIN, MetadataField
from app.routers.sessions import wait_for_end
from app.sessions.admission import MAX_METADATA_BYTES
from app.sessions.ids import locate_run
from app.sessions.models import BusyPolicy, NewRun
from app.sessions.ref import SessionRef
from app.webhooks.targets import webhook_for

router = APIRouter(prefix="/internal", tags=["internal"])

SAFE_ID = r"^[A-Za-z0-9._:\-]+$"


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1, max_length=64, pattern=SAFE_ID)
    execution_id: str = Field(min_length=1, max_length=200, pattern=SAFE_ID)
    message: str = Field(min_length=1, max_length=32_000)
    session_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=SAFE_ID)
    tenant: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$"
    )
    timeout_seconds: float | None = Field(default=None, ge=1, le=7200, strict=True)
    busy_policy: BusyPolicy = BusyPolicy.REJECT
    metadata: MetadataField = Field(default_factory=dict)
    webhook: str | None = Field(default=None, min_length=1, max_length=2000)
    priority: int = Field(default=5, ge=0, le=9, strict=True)
    start_within_seconds: float | None = Field(default=None, gt=0, le=MAX_START_WITHIN, strict=True)

    def fingerprint(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@router.post(
    "/execute-task",
    status_code=202,
    summary="Run a scheduled task",
    description=(
        "Run `message` for the scheduler's `execution_id`: one execution id is one run, "
        "however often it is sent. An `Idempotency-Key` already used with another "
        "execution id, or an execution id sent again with another request, is a 409."
    ),
    response_model=None,
    responses=answers(TaskAccepted, 409, 429, status=202, description="Admitted.")
    | {200: {"model": ExecutionRunOut, "description": "With `wait`: the run, once ended."}},
)
async def execute_task(
    task: TaskIn,
    resources: InternalDep,
    wait: Annotated[float | None, Query(gt=0, le=60), PLAIN_FLOAT] = None,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JSONResponse:
    agent_id = resources.agents.resolve(task.agent_id)
    tenant = task.tenant or resources.settings.internal_tenant
    session_id = task.session_id or f"task:{agent_id}"
    session = SessionRef.of(tenant, session_id)
    fingerprint = task.fingerprint()
    webhook = webhook_for(resources.settings, task.webhook)  # before anything is written
    metadata_size = len(json.dumps(task.metadata, separators=(",", ":")))
    if metadata_size > MAX_METADATA_BYTES:  # before the execution is claimed: nothing written
        raise MetadataTooLargeError(metadata_size, MAX_METADATA_BYTES)
    claimed = await resources.executions.claim(
        Execution(
            task.execution_id,
            tenant,
            session_id,
            fingerprint,
            idempotency_key or task.execution_id,
        )
    )
    if claimed.fingerprint != fingerprint:
        raise IdempotencyConflictError(
            f"execution {task.execution_id!r} was already submitted with a different request"
        )
    submitted = await resources.sessions.submit(
        session,
        NewRun(
            text=task.message,
            agent_id=agent_id,
            busy_policy=task.busy_policy,
            metadata=task.metadata,
            idempotency_key=claimed.run_idempotency_key,
            timeout_seconds=task.timeout_seconds or resources.settings.task_timeout_seconds,
            webhook=webhook,
            priority=task.priority,
            start_within_seconds=task.start_within_seconds,
        ),
    )
    admission = submitted.admission
    replay = {"idempotent_replay": True} if admission.duplicate else {}
    if wait is not None:
        ended = await wait_for_end(SessionCall(resources, session), submitted, wait)
        if ended is not None:
            body = ended | {"execution_id": task.execution_id} | replay
            return JSONResponse(body, status_code=200)
    return JSONResponse(
        {
            "execution_id": task.execution_id,
            "run_id": admission.run_id,
            "session_id": session_id,
            "status": admission.status.value,
        }
        | replay,
        status_code=202,
    )


@router.get(
    "/executions/{execution_id}",
    summary="Read an execution's run",
    description="The run a scheduled execution became.",
    response_model=None,
    responses=answers(ExecutionRunOut, 404),
)
async def get_execution(execution_id: str, resources: InternalDep) -> dict[str, Any]:
    execution = await resources.executions.get(execution_id)
    session = SessionRef.of(execution.tenant, execution.session_id)
    run = await resources.reads.find_by_idempotency_key(session, execution.run_idempotency_key)
    return run.public() | {"execution_id": execution_id}


@router.get(
    "/webhooks",
    summary="List dead webhooks",
    response_model=None,
    responses=answers(WebhooksOut),
)
async def list_webhooks(
    resources: InternalDep,
    status: Annotated[Literal["dead"], Query()] = "dead",
    limit: Annotated[int, Query(ge=1, le=1000), PLAIN_INT] = 100,
) -> dict[str, Any]:
    """Completion webhooks and subscription-switch notices given up on, newest first (URLs
    are not shown: they may hold credentials)."""
    found = []
    for run_id in await resources.outbox.dead(limit):
        session = SessionRef.of(*locate_run(run_id))
        delivery = await resources.outbox.get(session, run_id)
        if delivery is not None and delivery.get("status") == status:
            found.append(
                {
                    "run_id": run_id,
                    "session_id": session.session_id,
                    "tenant": session.tenant,
                    "attempts": int(delivery["attempts"]),
                    "last_error": delivery.get("last_error"),
                }
            )
    return {"webhooks": found, "notices": await resources.notices.dead(limit)}


@router.post(
    "/webhooks/{run_id}/redeliver",
    summary="Redeliver a completion webhook",
    description="Send a dead (or any owed) completion webhook again, from the first attempt.",
    response_model=None,
    responses=answers(RedeliveredOut, 404),
)
async def redeliver_webhook(run_id: str, resources: InternalDep) -> dict[str, Any]:
    session = SessionRef.of(*locate_run(run_id))
    if not await resources.outbox.redeliver(session, run_id, round(time.time() * 1000)):
        raise RunNotFoundError(run_id)
    await resources.outbox.forget_dead(run_id)
    return {"run_id": run_id, "status": "pending"}


@router.post(
    "/agents/{agent_id}/notices/{notice_id}/redeliver",
    summary="Redeliver a subscription-switch notice",
    description="Send a dead (or any owed) switch notice again, from the first attempt.",
    response_model=None,
    responses=answers(NoticeRedeliveredOut, 404),
)
async def redeliver_notice(agent_id: str, notice_id: str, resources: InternalDep) -> dict[str, Any]:
    if not await resources.notices.redeliver(agent_id, notice_id, round(time.time() * 1000)):
        raise NoticeNotFoundError(agent_id, notice_id)
    if resources.deliverer is not None:
        resources.deliverer.soon()
    return {"agent_id": agent_id, "notice_id": notice_id, "status": "pending"}
