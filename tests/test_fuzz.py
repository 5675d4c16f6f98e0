"""Schemathesis against a live server, from its own OpenAPI document.

Every operation (but the streams, whose answers do not end) gets valid and invalid
requests, with the tenant's API key on /v1 and the internal secret on /internal: no
answer is a 5xx, every answer conforms to the documented status codes, media types and
schemas, and a request answered with an error leaves Redis exactly as it was (every key
and its content, but those that change while the server is idle: worker heartbeats, the
sweeper's lease; and the control scripts' replay records).
Derandomized, with few examples per operation, so a run is the same each time and short.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.keys import ACTIVE_SESSIONS, WEBHOOK_SESSIONS
from app.redis import as_text
from app.redis.server import RedisServer, free_port
from tests.support.servers import (
    ACME,
    API_KEYS,
    INTERNAL,
    INTERNAL_SECRET,
    base_env,
    server_process,
    uvicorn_command,
    write_agents_file,
)
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.multiprocess

EXAMPLES = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 8}
STREAMING = ("text/event-stream",)
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
Snapshot = dict[bytes, Any]
PRUNED = {ACTIVE_SESSIONS.encode(), WEBHOOK_SESSIONS.encode()}
REPLY_RECORD = b":reply:"
"""A control script's answer, kept 60 s so that a re-sent call is answered as the first
was (replay safety): written for refusals too, it is no state of the session."""


@dataclass(frozen=True)
class Live:
    url: str
    redis: redis.Redis
    volatile: set[bytes]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("fuzz")
    with RedisServer(folder / "redis", appendonly=False) as server:
        env = base_env(
            LEASEGATE_REDIS_URL=server.url,
            LEASEGATE_AGENTS_FILE=str(write_agents_file(folder)),
            LEASEGATE_API_KEYS=json.dumps(API_KEYS),
            LEASEGATE_INTERNAL_SECRET=INTERNAL_SECRET,
            LEASEGATE_LOG_LEVEL="WARNING",
            LEASEGATE_LEASE_TTL_SECONDS="3",
            LEASEGATE_SWEEP_INTERVAL_SECONDS="1",  # what runs at rest shows within volatile_keys'
            LEASEGATE_WORKER_HEARTBEAT_SECONDS="1",  # look
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with server_process(uvicorn_command(port, 1), env, folder / "server.log", url):
            client = redis.Redis.from_url(server.url)
            try:
                yield Live(url, client, volatile_keys(client))
            finally:
                client.close()


def snapshot(client: redis.Redis, volatile: set[bytes]) -> Snapshot:
    found: Snapshot = {}
    for key in client.scan_iter(count=1000):
        if key in volatile or REPLY_RECORD in key:
            continue
        kind = as_text(client.type(key))
        if kind == "none":  # gone since the scan
            continue
        reader: Callable[[bytes], Any] | None = {
            "string": client.get,
            "hash": client.hgetall,
            "list": lambda k: client.lrange(k, 0, -1),
            "set": client.smembers,
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            "stream": client.xrange,
        }.get(kind)  # type: ignore[assignment]
        found[key] = reader(key) if reader else kind
    return found


def volatile_keys(client: redis.Redis) -> set[bytes]:
    """Keys whose content changes while nothing is asked of the server."""
    first = snapshot(client, set())
    changed: set[bytes] = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        later = snapshot(client, set())
        changed |= {k for k in first.keys() | later.keys() if first.get(k) != later.get(k)}
        time.sleep(0.1)  # sampling the idle server's writes, not synchronising with it
    return changed


def settled(client: redis.Redis, volatile: set[bytes]) -> Snapshot:
    """The keyspace once two reads in a row agree (runs admitted earlier have ended)."""
    last: list[Snapshot] = [snapshot(client, volatile)]

    def same() -> bool:
        now = snapshot(client, volatile)
        stable = now == last[0]
        last[0] = now
        return stable

    wait_until_sync(same, 10.0, "the keyspace to settle")
    return last[0]


def changes(where: str, before: Snapshot, after: Snapshot) -> list[str]:
    """What an error answer changed, key by key (nothing, as it should be). The sweeper
    prunes its indexes at any time: those may lose members, never gain one."""
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return [
        f"{where}: an error answer changed {key!r}: {after.get(key)!r}"
        for key in changed
        if key not in PRUNED or not set(after.get(key) or []) <= set(before.get(key) or [])
    ]


def status_mismatch(where: str, response: Any) -> list[str]:
    """An error answer whose problem document's `status` is not its HTTP status code."""
    status = response.json().get("status")
    return [] if status == response.status_code else [f"{where}: problem status {status}"]


def credentials(path: str) -> dict[str, str]:
    return INTERNAL if path.startswith("/internal") else ACME


def test_the_live_api_conforms_to_its_document(live: Live) -> None:
    url, client, volatile = live.url, live.redis, live.volatile
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [
        operation
        for operation in (result.ok() for result in schema.get_all_operations())  # type: ignore[union-attr]
        if not any(
            media in STREAMING
            for response in operation.definition.raw["responses"].values()
            for media in response.get("content", {})
        )
    ]
    assert len(operations) >= 20
    failures: list[str] = []
    for operation in operations:
        for mode, count in EXAMPLES.items():

            @settings(
                max_examples=count,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def exercise(case: Any) -> None:
                before = settled(client, volatile)
                for name in ("Authorization", "X-Internal-Secret"):  # the scheme's, generated
                    case.headers.pop(name, None)
                response = case.call(base_url=url, headers=credentials(case.path), timeout=70)
                where = f"{case.method} {case.formatted_path} -> {response.status_code}"
                if response.status_code >= 500:
                    failures.append(f"{where}: {response.text[:300]}")
                if response.status_code >= 400:
                    failures.extend(changes(where, before, snapshot(client, volatile)))
                    failures.extend(status_mismatch(where, response))
                try:
                    case.validate_response(response, checks=CHECKS)
                except (AssertionError, FailureGroup) as exc:
                    failures.append(f"{where}: {str(exc)[:600]}")

            try:
                exercise()
            except Unsatisfiable:  # no input to get wrong (GET /healthz): nothing to negate
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert not failures, "\n".join(failures)


def test_linked_calls_conform_to_the_document(live: Live) -> None:
    """Sequences along the document's links: a message's run read, cancelled, its session
    read and stopped; a task's execution read back."""
    url, client, volatile = live.url, live.redis, live.volatile
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json").exclude(
        path_regex=r"/(events|ag-ui|stream)$"
    )
    failures: list[str] = []
    steps: list[str] = []

    class Linked(schema.as_state_machine()):  # type: ignore[misc]
        before: ClassVar[Snapshot] = {}

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": url, "headers": credentials(case.path), "timeout": 70}

        def before_call(self, case: Any) -> None:
            for name in ("Authorization", "X-Internal-Secret"):
                case.headers.pop(name, None)
            Linked.before = settled(client, volatile)

        def after_call(self, response: Any, case: Any) -> None:
            where = f"{case.method} {case.formatted_path} -> {response.status_code}"
            steps.append(where)
            if response.status_code >= 500:
                failures.append(f"{where}: {response.text[:300]}")
            if response.status_code >= 400:
                failures.extend(changes(where, self.before, snapshot(client, volatile)))
                failures.extend(status_mismatch(where, response))

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS)
            except (AssertionError, FailureGroup) as exc:
                failures.append(f"{case.method} {case.formatted_path}: {str(exc)[:600]}")

    Linked.run(
        settings=settings(
            max_examples=8,
            stateful_step_count=4,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert not failures, "\n".join(failures)
    assert any("/v1/runs/" in step for step in steps), steps  # a link was followed


def test_the_state_check_sees_what_an_error_answer_would_write(
    live: Live,
) -> None:
    """The check above is no tautology: a write beside a refusal is reported, key by key."""
    client = live.redis
    before = snapshot(client, set())
    client.hset("lg:{s:acme:probe}:state", "default_policy", "reject")
    client.set("lg:{s:acme:probe}:state:reply:probe-request", "[9]")  # a replay record: not state
    try:
        found = changes("POST /v1/sessions/probe/messages -> 422", before, snapshot(client, set()))
    finally:
        client.delete("lg:{s:acme:probe}:state", "lg:{s:acme:probe}:state:reply:probe-request")
    assert len(found) == 1 and "lg:{s:acme:probe}:state'" in found[0], found
