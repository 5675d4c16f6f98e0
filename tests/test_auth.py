"""API keys and tenants on /v1, the shared secret on /internal; secrets never shown."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.redis.server import RedisServer
from tests.support.api import app_client
from tests.support.servers import ACME, API_KEYS, GLOBEX, INTERNAL, INTERNAL_SECRET
from tests.support.settings import make_settings
from tests.support.waiting import written_keys

SECRETS = [*API_KEYS, INTERNAL_SECRET]
TASK = {"agent_id": "echo", "execution_id": "exec-1", "message": "hi"}


@pytest.fixture
async def api(redis: Redis, redis_server: RedisServer) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(
        redis_server.url, api_keys=API_KEYS, internal_secret=INTERNAL_SECRET
    ) as client:
        yield client


def no_secret_in(*texts: str) -> bool:
    return not any(secret in text for secret in SECRETS for text in texts)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic a2V5LWFjbWUtMDAwMTo="}, 401),
        ({"Authorization": "key-acme-0001"}, 401),
        ({"Authorization": "Bearer not-a-key-at-all"}, 403),
        ({"Authorization": f"Bearer {INTERNAL_SECRET}"}, 403),  # the internal secret on /v1
        (INTERNAL, 401),
    ],
)
async def test_v1_refuses_missing_and_wrong_credentials(
    api: httpx.AsyncClient,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    status: int,
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = await api.post("/v1/sessions/s/messages", json={"text": "x"}, headers=headers)
        listing = await api.get("/v1/sessions/s", headers=headers)
    assert response.status_code == status and listing.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    assert await written_keys(redis) == []  # nothing done
    assert any("authentication failed" in r.getMessage() for r in caplog.records)
    assert no_secret_in(response.text, listing.text, *(r.getMessage() for r in caplog.records))


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Internal-Secret": "wrong-secret-value"}, 403),
        ({"Authorization": "Basic aW50ZXJuYWw="}, 401),
        ({"Authorization": "Bearer wrong-secret-value"}, 403),
        (ACME, 403),  # an API key on /internal
    ],
)
async def test_internal_refuses_missing_and_wrong_secrets(
    api: httpx.AsyncClient,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    status: int,
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = await api.post("/internal/execute-task", json=TASK, headers=headers)
        lookup = await api.get("/internal/executions/exec-1", headers=headers)
    assert response.status_code == status and lookup.status_code == status
    assert await written_keys(redis) == []
    assert no_secret_in(response.text, lookup.text, *(r.getMessage() for r in caplog.records))


async def test_internal_accepts_the_secret_in_either_header(api: httpx.AsyncClient) -> None:
    by_header = await api.post("/internal/execute-task", json=TASK, headers=INTERNAL)
    bearer = {"Authorization": f"Bearer {INTERNAL_SECRET}"}
    by_bearer = await api.post("/internal/execute-task", json=TASK, headers=bearer)
    assert by_header.status_code == by_bearer.status_code == 202
    assert by_header.json()["run_id"] == by_bearer.json()["run_id"]


async def test_internal_endpoints_are_off_without_a_secret(
    redis: Redis, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async with app_client(redis_server.url) as api:
            response = await api.post("/internal/execute-task", json=TASK, headers=INTERNAL)
            assert response.status_code == 404
            assert (await api.get("/internal/executions/x")).status_code == 404
    messages = [r.getMessage() for r in caplog.records]
    assert any("/internal endpoints are disabled" in m for m in messages)
    assert any("single-tenant" in m for m in messages)


async def test_tenants_never_see_each_others_sessions_or_runs(api: httpx.AsyncClient) -> None:
    mine = (
        await api.post(
            "/v1/sessions/shared/messages",
            params={"wait": 5},
            json={"text": "acme's"},
            headers=ACME,
        )
    ).json()
    run_id = mine["run_id"]
    theirs: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/sessions/shared", None),
        ("GET", "/v1/sessions/shared/runs", None),
        ("GET", "/v1/sessions/shared/transcript", None),
        ("POST", "/v1/sessions/shared/stop", None),
        ("POST", "/v1/sessions/shared/reset", None),
        ("GET", f"/v1/runs/{run_id}", None),
        ("POST", f"/v1/runs/{run_id}/cancel", None),
    ]
    for method, path, body in theirs:
        response = await api.request(method, path, json=body, headers=GLOBEX)
        assert response.status_code == 404, (method, path, response.text)
        assert "acme" not in response.text
    # The same session id is a different session for globex.
    other = (
        await api.post(
            "/v1/sessions/shared/messages",
            params={"wait": 5},
            json={"text": "globex's"},
            headers=GLOBEX,
        )
    ).json()
    assert other["run_id"] != run_id and other["fence"] == 1
    acme_turns = (await api.get("/v1/sessions/shared/transcript", headers=ACME)).json()["turns"]
    assert [t["text"] for t in acme_turns] == ["acme's", "echo: acme's"]
    globex_runs = (await api.get("/v1/sessions/shared/runs", headers=GLOBEX)).json()["runs"]
    assert [r["input"] for r in globex_runs] == ["globex's"]


async def test_unknown_sessions_are_404(api: httpx.AsyncClient) -> None:
    for path in ["/v1/sessions/never", "/v1/sessions/never/runs", "/v1/sessions/never/transcript"]:
        assert (await api.get(path, headers=ACME)).status_code == 404
    assert (await api.post("/v1/sessions/never/stop", headers=ACME)).status_code == 404


def test_settings_never_show_secrets() -> None:
    settings = make_settings(
        "redis://:hunter22@localhost:6379/0", api_keys=API_KEYS, internal_secret=INTERNAL_SECRET
    )
    shown = repr(settings) + str(settings)
    assert no_secret_in(shown) and "hunter22" not in shown
    assert json.dumps(API_KEYS) not in shown
