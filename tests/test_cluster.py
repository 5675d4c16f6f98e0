"""The core behaviours against a real 3-primary Redis Cluster, and a Sentinel smoke test.

The cluster is started once per test session (the `redis_cluster` fixture) from the same
redis-server binary as the other tests, and emptied before each test.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from app.keys import agent_keys, lease_keys, session_keys
from app.locks import LeaseManager
from app.metrics import Metrics
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from tests.support.api import (
    app_client,
    events,
    post,
    run_of,
    status_is,
    wait_all_terminal,
    wait_status,
)
from tests.support.checks import run_violations
from tests.support.leases import LeaseStack
from tests.support.scenarios import (
    EXHAUSTED_A,
    SLOW,
    cancel_and_reset_from_another_process,
    failing_runs_over_workers_switch_exactly_once,
    new_session,
    reset_racing_a_failing_run,
    stop_from_another_process,
)
from tests.support.servers import INTERNAL, Servers, agents_settings, single_process_servers
from tests.support.settings import make_settings
from tests.support.targets import node_of_slot, slot_of
from tests.support.topologies import LocalRedisCluster, LocalRedisSentinel
from tests.support.waiting import wait_until

pytestmark = pytest.mark.multiprocess

SLOW_50MS = {"delay_ms": 50}


@pytest.fixture
async def api(clean_cluster: LocalRedisCluster) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(clean_cluster.url, lease_ttl_seconds=2.0, queue_cap=5) as client:
        yield client


@pytest.fixture
async def cluster_client(clean_cluster: LocalRedisCluster) -> AsyncIterator[Redis]:
    client = create_redis(make_settings(clean_cluster.url))
    yield client
    await client.aclose()


def direct(port: int) -> sync_redis.Redis:
    return sync_redis.Redis(port=port, socket_timeout=5)


# --- sessions through the app ------------------------------------------------------------


async def test_post_with_wait_completes_and_every_key_stays_in_the_session_slot(
    api: httpx.AsyncClient, cluster_client: Redis
) -> None:
    response = await post(api, "chat-1", "hello", wait=5, idempotency_key="k-1")
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "completed" and run["output"] == "echo: hello"
    transcript = (await api.get("/v1/sessions/chat-1/transcript")).json()
    assert [t["text"] for t in transcript["turns"]] == ["hello", "echo: hello"]
    view = (await api.get("/v1/sessions/chat-1")).json()
    assert view["state"] == "idle" and view["generation"] == 1
    # Run records and transcripts are written by the scripts: all in the session's slot.
    keys = [k.decode() async for k in cluster_client.scan_iter("lg:{s:*")]
    assert any(k.endswith(":runs") for k in keys) and any(":transcript" in k for k in keys)
    assert {slot_of(k) for k in keys} == {slot_of(session_keys("default", "chat-1").state)}


async def test_follow_ups_queue_and_drain_in_order(api: httpx.AsyncClient) -> None:
    first = (await post(api, "s", "one", metadata=SLOW)).json()
    assert first["status"] == "running"
    follow = [(await post(api, "s", f"next-{i}")).json() for i in range(3)]
    assert [f["queue_position"] for f in follow] == [1, 2, 3]
    view = (await api.get("/v1/sessions/s")).json()
    assert view["state"] == "busy" and view["queued"] == [f["run_id"] for f in follow]
    await wait_status(api, follow[-1]["run_id"], "completed")
    runs = [await run_of(api, r["run_id"]) for r in [first, *follow]]
    assert all(r["status"] == "completed" for r in runs)
    starts = [r["started_at"] for r in runs]
    assert starts == sorted(starts)
    assert len({r["worker"] for r in runs}) == 1  # one holder drained them, renewing its lease
    fences = [r["fence"] for r in runs]
    assert fences == sorted(set(fences))  # each run under its own, higher fence


async def test_stop_cancels_the_active_and_queued_runs_through_pubsub(
    clean_cluster: LocalRedisCluster,
) -> None:
    # A 30 s TTL: the holder's renewal would read the stop request only after 10 s.
    async with app_client(clean_cluster.url, lease_ttl_seconds=30.0) as api:
        active = (await post(api, "s", "a", metadata={"delay_ms": 60_000})).json()
        queued = [(await post(api, "s", f"q{i}")).json()["run_id"] for i in range(2)]
        started = time.monotonic()
        stopped = (await api.post("/v1/sessions/s/stop")).json()
        assert sorted(stopped["cancelled"]) == sorted([*queued, active["run_id"]])
        await wait_status(api, active["run_id"], "cancelled")
        # Behaviour, not speed: told through the control channel, not at the next renewal.
        assert time.monotonic() - started < 5
        assert (await post(api, "s", "after", wait=5)).json()["status"] == "completed"


async def test_cancel_a_running_run_and_the_session_goes_on(api: httpx.AsyncClient) -> None:
    active = (await post(api, "s", "long", metadata={"delay_ms": 60_000})).json()
    queued = (await post(api, "s", "next")).json()
    cancelled = await api.post(f"/v1/runs/{active['run_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await wait_status(api, queued["run_id"], "completed"))["output"] == "echo: next"


async def test_reset_fences_out_the_old_run(clean_cluster: LocalRedisCluster) -> None:
    metrics = Metrics()
    async with app_client(clean_cluster.url, metrics=metrics, lease_ttl_seconds=2.0) as api:
        await reset_racing_a_failing_run(api, metrics)


async def test_readyz_loads_every_script_on_every_primary(
    clean_cluster: LocalRedisCluster,
) -> None:
    async with app_client(clean_cluster.url) as client:
        shas = [script.sha for script in client.resources.scripts]
        for node in clean_cluster.nodes:
            with direct(node.port) as primary:
                primary.script_flush()
        assert (await client.get("/readyz")).status_code == 200
    for node in clean_cluster.nodes:
        with direct(node.port) as primary:
            assert primary.script_exists(*shas) == [True] * len(shas), node.port


# --- the lease primitive and its wakeups -------------------------------------------------


async def test_a_release_in_a_script_reaches_subscribers_on_every_node(
    clean_cluster: LocalRedisCluster,
) -> None:
    keys = lease_keys("broadcast")
    subscribers = [Redis(port=node.port).pubsub() for node in clean_cluster.nodes]
    try:
        for pubsub in subscribers:
            await pubsub.subscribe(keys.channel)
            assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        async with LeaseStack(clean_cluster.url, Metrics(), ttl=5, heartbeat=1) as leases:
            lease = await leases.acquire("broadcast")
            assert lease is not None
            await leases.release(lease)
        for pubsub in subscribers:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message is not None and message["channel"].decode() == keys.channel
    finally:
        for pubsub in subscribers:
            await pubsub.aclose()
            await pubsub.connection_pool.aclose()


async def _hand_off(first: LeaseManager, second: LeaseManager, resource: str) -> None:
    """`second` waits for `first`'s lease and is woken by the release, not by the TTL."""
    held = await first.acquire(resource, ttl=30)
    assert held is not None
    waiter = asyncio.create_task(second.wait_acquire(resource, timeout=10, ttl=30))

    async def waiting() -> bool:  # its second attempt comes after it subscribed
        sample = second.metrics.registry.get_sample_value(
            "leasegate_lease_acquisitions_total", {"outcome": "held"}
        )
        return (sample or 0) >= 2

    await wait_until(waiting, what="the second worker to wait")
    released = time.monotonic()
    await first.release(held)
    taken = await waiter
    assert time.monotonic() - released < 2  # the TTL was 30 s: the release woke it
    assert taken.fence == held.fence + 1
    await second.release(taken)


async def test_lease_hand_off_between_two_workers(clean_cluster: LocalRedisCluster) -> None:
    async with (
        LeaseStack(clean_cluster.url, Metrics(), ttl=0.6, heartbeat=0.15) as first,
        LeaseStack(clean_cluster.url, Metrics(), ttl=0.6, heartbeat=0.15) as second,
    ):
        # Resources on each of the three primaries.
        resources = [f"job-{i}" for i in range(30)]
        ports = {r: node_of_slot(clean_cluster, slot_of(lease_keys(r).lease)) for r in resources}
        assert len(set(ports.values())) == 3
        for port in sorted(set(ports.values())):
            resource = next(r for r in resources if ports[r] == port)
            await _hand_off(first, second, resource)
        async with first.hold("held-with-heartbeat") as lease:
            await asyncio.sleep(1.0)  # longer than the TTL: renewed by the heartbeat
        assert await second.acquire("held-with-heartbeat") is not None
        assert lease.fence == 1


# --- the subscription switch -------------------------------------------------------------


async def test_ten_concurrent_failing_runs_switch_exactly_once(
    clean_cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    async with app_client(clean_cluster.url, headers=INTERNAL, **agents_settings(tmp_path)) as http:
        responses = await asyncio.gather(
            *(
                post(
                    http,
                    f"s{i}",
                    "hi",
                    agent_id="helper",
                    metadata=EXHAUSTED_A,
                    wait=10,
                    expect=200,
                )
                for i in range(10)
            )
        )
        runs = [r.json() for r in responses]
        assert [(r["status"], r["subscription"]) for r in runs] == [("completed", "sub-b")] * 10
        state = (await http.get("/internal/agents/helper")).json()
        assert state["subscription"] == "sub-b" and state["switch_count"] == 1
        found = await events(http, "helper")
        assert [(e["type"], e["from"], e["to"]) for e in found] == [
            ("subscription_switched", "sub-a", "sub-b")
        ]
        # Every agent's events in one pipeline, across slots.
        every = (await http.get("/internal/events")).json()["events"]
        assert [(e["agent_id"], e["to"]) for e in every] == [("helper", "sub-b")]
    slots = {slot_of(k) for k in (agent_keys("helper").assignment, agent_keys("helper").events)}
    assert slots == {slot_of(agent_keys("helper").lease.lease)}


# --- real worker processes --------------------------------------------------------------


async def test_four_workers_and_a_second_process_share_the_cluster(
    cluster_servers: Servers,
) -> None:
    """The multi-worker scenarios of the single-server suites, on the cluster."""
    session = new_session()
    await asyncio.gather(
        *(
            post(cluster_servers.four_workers, session, f"m{i}", metadata=SLOW_50MS, expect=202)
            for i in range(50)
        )
    )
    runs = await wait_all_terminal(cluster_servers.four_workers, session, 50)
    assert {r["status"] for r in runs} == {"completed"}
    assert run_violations(runs) == []  # one at a time, in admission order, fences rising
    await stop_from_another_process(cluster_servers)
    await cancel_and_reset_from_another_process(cluster_servers)
    await failing_runs_over_workers_switch_exactly_once(cluster_servers)


async def test_sigterm_hands_the_queued_runs_to_another_process(
    clean_cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    """The wake-up is PUBLISHed from Python (not from a script) and heard on any node."""
    env = {"LEASEGATE_SHUTDOWN_GRACE_SECONDS": "5"}
    with single_process_servers(clean_cluster.url, tmp_path, 2, **env) as [
        (leaving, process),
        (staying, _),
    ]:
        finishing = (
            await post(leaving, "term", "almost done", metadata={"delay_ms": 800}, expect=202)
        ).json()
        queued = [
            (await post(leaving, "term", f"q{i}", expect=202)).json()["run_id"] for i in range(3)
        ]
        await wait_until(lambda: status_is(staying, finishing["run_id"], "running"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) in (0, -signal.SIGTERM)
        left_at = time.monotonic()
        for run_id in queued:
            await wait_until(functools.partial(status_is, staying, run_id, "completed"))
        assert time.monotonic() - left_at < 3  # the lease TTL is 10 s: woken, not expired
        assert (await run_of(staying, finishing["run_id"]))["status"] == "completed"


# --- a primary that dies -----------------------------------------------------------------


def _pubsub_clients(port: int) -> int:
    with direct(port) as client:
        return len(client.client_list(_type="pubsub"))


def _restart(cluster: LocalRedisCluster, port: int) -> None:
    node = next(n for n in cluster.nodes if n.port == port)
    node.start()
    cluster.wait_until_ok()


async def test_a_dead_primary_is_503_and_the_service_recovers(
    clean_cluster: LocalRedisCluster,
) -> None:
    port = node_of_slot(clean_cluster, slot_of(session_keys("default", "s").state))
    node = next(n for n in clean_cluster.nodes if n.port == port)
    async with app_client(clean_cluster.url, redis_timeout_seconds=0.5) as api:
        assert (await post(api, "s", "before", wait=5)).status_code == 200
        node.stop()
        try:
            down = await post(api, "s", "during")
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == str(api.settings.retry_after_seconds)
            assert (await api.get("/readyz")).status_code == 503
        finally:
            _restart(clean_cluster, port)
        after = await post(api, "s", "after", wait=5)
        assert after.status_code == 200 and after.json()["status"] == "completed"


async def test_the_hub_moves_to_a_live_node_when_its_node_dies(
    clean_cluster: LocalRedisCluster,
) -> None:
    client = create_redis(make_settings(clean_cluster.url))
    hub = PubSubHub(client)
    ports = [node.port for node in clean_cluster.nodes]
    stopped: int | None = None

    def on(nodes: list[int]) -> Callable[[], Awaitable[bool]]:
        async def one_hub_connection() -> bool:  # (the calls are quick local ones)
            return sum(map(_pubsub_clients, nodes)) == 1

        return one_hub_connection

    try:
        await client.ping()  # the client knows every node now
        hub.start()
        await wait_until(on(ports), what="the hub's connection")
        stopped = next(p for p in ports if _pubsub_clients(p) == 1)
        next(n for n in clean_cluster.nodes if n.port == stopped).stop()
        alive = [p for p in ports if p != stopped]
        await wait_until(on(alive), what="the hub to reconnect to a live node")
        # PUBLISH has no key: it works while the cluster misses a primary, and any node
        # broadcasts it. Published on the node the hub is not on:
        other = next(p for p in alive if _pubsub_clients(p) == 0)
        async with hub.watch("lg:test:moved") as event:
            with direct(other) as publisher:
                publisher.publish("lg:test:moved", "1")
            async with asyncio.timeout(5):
                await event.wait()
    finally:
        await hub.close()
        await client.aclose()
        if stopped is not None:
            _restart(clean_cluster, stopped)


# --- Sentinel ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisSentinel]:
    with LocalRedisSentinel(tmp_path_factory.mktemp("sentinel")) as sentinel:
        yield sentinel


async def test_sentinel_url_serves_sessions_leases_and_signals(
    redis_sentinel: LocalRedisSentinel,
) -> None:
    with direct(redis_sentinel.master.port) as master:
        master.flushall()
    async with app_client(redis_sentinel.url, lease_ttl_seconds=2.0) as api:
        assert (await api.get("/readyz")).status_code == 200
        done = (await post(api, "s", "hello", wait=5)).json()
        assert done["status"] == "completed"
        active = (await post(api, "s", "long", metadata={"delay_ms": 60_000})).json()
        assert (await api.post("/v1/sessions/s/stop")).json()["cancelled"] == [active["run_id"]]
        await wait_status(api, active["run_id"], "cancelled")
    with direct(redis_sentinel.master.port) as master:
        assert master.exists(session_keys("default", "s").state)  # written to the master
    async with (
        LeaseStack(redis_sentinel.url, Metrics(), ttl=2, heartbeat=0.5) as first,
        LeaseStack(redis_sentinel.url, Metrics(), ttl=2, heartbeat=0.5) as second,
    ):
        await _hand_off(first, second, "sentinel-job")
