"""Errors as RFC 9457 problem documents: `status` is always the HTTP status code."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import problems
from app.metrics import Metrics
from app.middleware import InputGuardMiddleware
from app.problems import EXPOSED_ATTRIBUTES, STANDARD_MEMBERS
from app.redis.server import RedisServer
from tests.support.api import app_client, post


def test_no_error_context_is_exposed_under_a_standard_member_name() -> None:
    assert not STANDARD_MEMBERS & set(EXPOSED_ATTRIBUTES)


async def test_cancelling_a_completed_run_is_409_with_the_run_status_apart(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with app_client(redis_server.url) as api:
        done = await post(api, "s", "hi", wait=5)
        assert done.json()["status"] == "completed"
        response = await api.post(f"/v1/runs/{done.json()['run_id']}/cancel")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 409
    assert problem["run_status"] == "completed"
    assert problem["type"] == "/problems/run-terminal"
    assert problem["run_id"] == done.json()["run_id"]


def _problem_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(InputGuardMiddleware)
    problems.install(app, retry_after_seconds=2, metrics=Metrics())

    @app.post("/raise/{index}")
    async def raise_one(index: int) -> None:
        cls = problems.PROBLEMS[index][0]
        error = cls.__new__(cls)
        Exception.__init__(error, "x" * 1000)
        raise error

    @app.post("/unreadable")
    async def unreadable() -> None:
        raise StarletteHTTPException(400, "There was an error parsing the body")

    @app.post("/body")
    async def body(value: dict[str, int]) -> None:
        pass

    return app


async def test_status_in_every_problem_document_is_the_http_status_code() -> None:
    transport = httpx.ASGITransport(app=_problem_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        answers = [await http.post(f"/raise/{index}") for index in range(len(problems.PROBLEMS))]
        answers += [
            await http.post("/unreadable"),
            await http.post("/body", json={"value": "not a number"}),
            await http.post("/body", content=b"{", headers={"content-type": "application/json"}),
            await http.post(
                "/body", content=b"[NaN]", headers={"content-type": "application/json"}
            ),
            await http.post("/body", headers=[("idempotency-key", "a"), ("idempotency-key", "b")]),
            await http.get("/nowhere"),
            await http.get("/body"),
        ]
    seen = set()
    for response in answers:
        assert response.headers["content-type"] == "application/problem+json", response.text
        problem = response.json()
        assert problem["status"] == response.status_code, problem
        assert len(problem["detail"]) <= problems.ECHO_LIMIT
        seen.add(response.status_code)
    assert {401, 403, 404, 405, 409, 422, 429, 502, 503} <= seen
    assert 400 not in seen  # every malformed request is a 422
