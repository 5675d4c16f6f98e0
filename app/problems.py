"""The one place where errors become HTTP responses: RFC 9457 problem details."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    AgentFailedError,
    AgentInputError,
    EndpointDisabledError,
    ExecutionNotFoundError,
    ForbiddenError,
    IdempotencyConflictError,
    InvalidKeyError,
    LeasegateError,
    LeaseTimeoutError,
    MetadataTooLargeError,
    NoticeNotFoundError,
    QueueFullError,
    RedisUnavailableError,
    RunNotFoundError,
    RunTerminalError,
    ServiceClosingError,
    SessionBusyError,
    SessionNotFoundError,
    UnauthenticatedError,
    UnknownAgentError,
    UnknownSubscriptionError,
    WebhookNotAllowedError,
)
from app.metrics import Metrics

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    slug: str
    title: str
    retry_after: bool = False


# Most specific first: the first matching class wins.
PROBLEMS: list[tuple[type[LeasegateError], Problem]] = [
    (
        RedisUnavailableError,
        Problem(503, "redis-unavailable", "Service temporarily unavailable", retry_after=True),
    ),
    (ServiceClosingError, Problem(503, "shutting-down", "Service shutting down", retry_after=True)),
    (InvalidKeyError, Problem(422, "invalid-id", "Invalid identifier")),
    (MetadataTooLargeError, Problem(422, "metadata-too-large", "Metadata too large")),
    (WebhookNotAllowedError, Problem(422, "webhook-not-allowed", "Webhook not allowed")),
    (UnknownAgentError, Problem(422, "unknown-agent", "Unknown agent")),
    (AgentInputError, Problem(422, "invalid-agent-input", "Agent input not runnable")),
    (UnknownSubscriptionError, Problem(422, "unknown-subscription", "Unknown subscription")),
    (SessionBusyError, Problem(409, "session-busy", "Session is busy", retry_after=True)),
    (QueueFullError, Problem(429, "queue-full", "Session queue is full", retry_after=True)),
    (RunNotFoundError, Problem(404, "run-not-found", "Run not found")),
    (RunTerminalError, Problem(409, "run-terminal", "Run already ended")),
    (IdempotencyConflictError, Problem(409, "idempotency-conflict", "Idempotency key conflict")),
    (LeaseTimeoutError, Problem(409, "lease-held", "Resource is busy", retry_after=True)),
    (AgentFailedError, Problem(502, "agent-failed", "Agent failed")),
    (SessionNotFoundError, Problem(404, "session-not-found", "Session not found")),
    (ExecutionNotFoundError, Problem(404, "execution-not-found", "Execution not found")),
    (NoticeNotFoundError, Problem(404, "notice-not-found", "Switch notice not found")),
    (EndpointDisabledError, Problem(404, "http-404", "Not Found")),
    (UnauthenticatedError, Problem(401, "unauthenticated", "Authentication required")),
    (ForbiddenError, Problem(403, "forbidden", "Credentials not accepted")),
]

# The members RFC 9457 defines; `status` is the HTTP status code, so context never uses them.
STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})
# Context attributes of an error that are safe to show the caller, as extension members.
EXPOSED_ATTRIBUTES = (
    "session_id",
    "active_run_id",
    "run_id",
    "run_status",
    "agent_id",
    "execution_id",
    "notice_id",
)
INTERNAL = Problem(500, "internal", "Internal server error")
UNREADABLE = Problem(422, "invalid-body", "Request body not readable")
"""What FastAPI's own 400 (a body it could not read) answers: every malformed request is
a 422, whatever part of it is wrong."""

ECHO_LIMIT = 200
"""Characters of any string a problem document carries (names, ids, keys and messages can
echo input); the rest is cut, marked by an ellipsis."""


def capped(value: Any, limit: int = ECHO_LIMIT) -> Any:
    """`value` with every string in it cut to `limit` characters."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[: limit - 1] + "\u2026"
    if isinstance(value, list | tuple):
        return [capped(item, limit) for item in value]
    if isinstance(value, dict):
        return {capped(key, limit): capped(item, limit) for key, item in value.items()}
    return value


def problem_response(
    problem: Problem,
    detail: str,
    request: Request,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    clash = STANDARD_MEMBERS & extra.keys()
    if clash:
        raise ValueError(f"extension members {sorted(clash)} would replace RFC 9457 members")
    body = {
        "type": f"/problems/{problem.slug}",
        "title": problem.title,
        "status": problem.status,
        "detail": capped(detail),
        "instance": capped(request.url.path),
        **capped(extra),
    }
    return JSONResponse(body, status_code=problem.status, headers=headers, media_type=PROBLEM_JSON)


def install(app: FastAPI, *, retry_after_seconds: int, metrics: Metrics) -> None:
    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LeasegateError)
        problem = next((p for cls, p in PROBLEMS if isinstance(exc, cls)), INTERNAL)
        if isinstance(exc, RedisUnavailableError):
            metrics.redis_errors.inc()
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        if problem is INTERNAL:
            log.error("unhandled %s: %s", type(exc).__name__, exc)
            return problem_response(problem, "The request failed.", request)
        headers = {"Retry-After": str(retry_after_seconds)} if problem.retry_after else None
        if problem.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        extra = {a: getattr(exc, a) for a in EXPOSED_ATTRIBUTES if hasattr(exc, a)}
        return problem_response(problem, str(exc), request, headers, **extra)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        problem = Problem(422, "validation", "Request validation failed")
        return problem_response(problem, "The request is not valid.", request, errors=errors)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:
            return problem_response(UNREADABLE, str(exc.detail), request)
        problem = Problem(exc.status_code, f"http-{exc.status_code}", str(exc.detail))
        return problem_response(problem, str(exc.detail), request, exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(INTERNAL, "The request failed.", request)

    app.add_exception_handler(LeasegateError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
