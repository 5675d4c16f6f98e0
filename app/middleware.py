"""Before any route: a request id for every request (taken from X-Request-ID or made,
returned, and logged), and the input checks no route's validation makes."""

from __future__ import annotations

import json
import math
import re
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.problems import Problem, problem_response

SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = presented if SAFE_ID.fullmatch(presented) else uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        with logs.bound(request_id=request_id):
            await self.app(scope, receive, send_with_id)


DUPLICATE_REFUSED = (b"authorization", b"idempotency-key", b"x-internal-secret", b"last-event-id")
"""Headers whose second copy would leave which one counts to whichever layer reads it."""
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_DEPTH = 64
"""Arrays and objects nested deeper are refused: Redis' scripts decode what is kept with a
run (cjson, 1000 levels at most) a level or two below where the body put it."""


class InputGuardMiddleware:
    """Refuses, as 422 problems and before any route runs, what the routes' validation
    would let through: a second copy of a credential or idempotency header, and a JSON body
    that is not strict JSON (NaN, Infinity, numbers beyond a double; or not JSON at all),
    which Python's parser accepts and Redis' scripts and every later answer could not."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = [name.lower() for name, _ in scope["headers"]]
        repeated = next((n for n in DUPLICATE_REFUSED if names.count(n) > 1), None)
        if repeated is not None:
            detail = f"the {repeated.decode()} header is sent more than once"
            await _refuse(scope, receive, send, "duplicate-header", "Header repeated", detail)
            return
        if scope["method"] not in BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        body, ended = await _read_body(receive)
        if ended is None and body:
            problem = strict_json_problem(body)
            if problem is not None:
                await _refuse(scope, receive, send, "invalid-json", "Body not valid JSON", problem)
                return
        await self.app(scope, _replaying(body, ended, receive), send)


def strict_json_problem(body: bytes) -> str | None:
    """Why `body` is not strict JSON (RFC 8259) nested at most MAX_DEPTH deep, or None."""
    try:
        value = json.loads(body, parse_constant=_not_a_number, parse_float=_finite_float)
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    except json.JSONDecodeError as exc:
        return f"the body is not JSON: {exc.msg} at position {exc.pos}"
    except ValueError as exc:
        return f"the body is not strict JSON: {exc}"
    except RecursionError:
        return f"the body is nested deeper than {MAX_DEPTH} levels"
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        return f"the body is nested deeper than {MAX_DEPTH} levels"
    return None


def _depth(value: object) -> int:
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            pending.extend((child, depth + 1) for child in item)
    return deepest


def _not_a_number(token: str) -> float:
    raise ValueError(f"{token} is not a JSON number")


def _finite_float(token: str) -> float:
    value = float(token)
    if math.isinf(value):
        raise ValueError(f"{token[:40]} is out of range")
    return value


def _is_json(scope: Scope) -> bool:
    headers: dict[bytes, bytes] = dict(scope["headers"])
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The whole body, or what came of it before a message that is not body (returned)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replaying(body: bytes, ended: Message | None, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if ended is not None:
        pending.append(ended)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _refuse(
    scope: Scope, receive: Receive, send: Send, slug: str, title: str, detail: str
) -> None:
    response = problem_response(Problem(422, slug, title), detail, Request(scope, receive))
    await response(scope, receive, send)
