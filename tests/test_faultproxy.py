"""The fault-injecting proxy of tests/support/faultproxy.py, against the suite's redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError

from app.redis import create_redis
from app.redis.server import RedisServer
from app.settings import Settings
from tests.support.faultproxy import (
    FaultProxy,
    RespError,
    command,
    evalsha_of,
    parse_command,
    reply_end,
)

DEADLINE = 5.0
INCR_SCRIPT = "return redis.call('INCR', KEYS[1])"


@asynccontextmanager
async def proxied(server: RedisServer) -> AsyncIterator[tuple[FaultProxy, Redis]]:
    """A proxy in front of `server`, and the service's own client (create_redis) through it."""
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        client = create_redis(Settings(redis_url=proxy.url))
        try:
            yield proxy, client
        finally:
            await client.aclose()


async def incr(client: Redis, key: str) -> int:
    """INCR itself: redis-py's incr() sends INCRBY <key> 1."""
    return int(await client.execute_command("INCR", key))  # type: ignore[no-untyped-call]


async def until_value(redis: Redis, key: str, value: bytes) -> None:
    """Ask the real server until `key` holds `value` (round trips, no sleeps). The deadline
    is checked here: a cancellation by asyncio.timeout can be lost inside redis-py's reads."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while await redis.get(key) != value:
        assert loop.time() < deadline, f"{key} never became {value!r}"


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


async def test_relays_commands_pipelines_and_pubsub(
    redis_server: RedisServer, redis: Redis
) -> None:
    async with proxied(redis_server) as (proxy, client), asyncio.timeout(DEADLINE):
        assert await client.set("k", "v") is True
        assert await client.get("k") == b"v"

        pipe = client.pipeline(transaction=False)
        for i in range(50):
            pipe.incr("n") if i % 2 else pipe.get("missing")
        assert await pipe.execute() == [None if i % 2 == 0 else i // 2 + 1 for i in range(50)]
        assert await client.eval("return {1, {2, {3}}, false, 'x'}", 0) == [1, [2, [3]], None, b"x"]

        pubsub = client.pubsub()
        try:
            await pubsub.subscribe("chan")
            assert (await pubsub.get_message(timeout=DEADLINE))["type"] == "subscribe"
            assert await client.publish("chan", "hello") == 1
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=DEADLINE)
            assert message is not None
            assert message["data"] == b"hello"
        finally:
            await pubsub.aclose()
        assert await client.get("k") == b"v"  # pooled connections still matched in order

        assert proxy.commands_seen(b"set") == 1
        assert proxy.commands_seen(b"INCRBY") == 25  # redis-py's incr() sends INCRBY n 1
        assert proxy.commands_seen(b"SUBSCRIBE") == 1
        assert await redis.get("n") == b"25"


async def test_drop_reply_makes_the_client_resend_an_executed_command(
    redis_server: RedisServer, redis: Redis
) -> None:
    async with proxied(redis_server) as (proxy, client), asyncio.timeout(DEADLINE):
        fault = proxy.drop_reply(command("incr"))

        # Redis ran INCR, the reply was lost with the connection, redis-py sent it again.
        assert await incr(client, "k") == 2

        assert fault.fired.is_set()
        assert fault.count == 1
        assert fault.commands == [[b"INCR", b"k"]]
        assert proxy.commands_seen(b"INCR") == 2
        assert await redis.get("k") == b"2"
        assert await incr(client, "k") == 3  # disarmed after one match


async def test_drop_reply_on_a_script_runs_it_twice(
    redis_server: RedisServer, redis: Redis
) -> None:
    async with proxied(redis_server) as (proxy, client), asyncio.timeout(DEADLINE):
        script = client.register_script(INCR_SCRIPT)
        assert await script(keys=["k"]) == 1  # loads it (NOSCRIPT, SCRIPT LOAD, EVALSHA)

        fault = proxy.drop_reply(evalsha_of(script.sha))
        assert await script(keys=["k"]) == 3
        assert fault.count == 1
        assert fault.commands == [[b"EVALSHA", script.sha.encode(), b"1", b"k"]]

        # EVAL of the same body matches too: a client falling back to EVAL is caught.
        fallback = proxy.drop_reply(evalsha_of(script.sha))
        assert await client.eval(INCR_SCRIPT, 1, "k") == 5
        assert fallback.count == 1
        assert fallback.commands[0][0] == b"EVAL"
        assert await redis.get("k") == b"5"

    matches = evalsha_of(script.sha)
    assert matches([b"evalsha", script.sha.upper().encode(), b"0"])
    assert matches([b"EVAL_RO", INCR_SCRIPT.encode(), b"0"])
    assert not matches([b"EVALSHA", b"0" * 40, b"0"])
    assert not matches([b"EVAL", b"return 1", b"0"])
    assert not matches([b"GET", script.sha.encode()])
    assert not matches([])


async def test_drop_reply_in_a_pipeline(redis_server: RedisServer, redis: Redis) -> None:
    async with proxied(redis_server) as (proxy, client), asyncio.timeout(DEADLINE):
        no_retry = Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 0))
        try:
            fault = proxy.drop_reply(lambda args: args[:2] == [b"INCRBY", b"b"])
            pipe = no_retry.pipeline(transaction=False)
            for key in "abc":
                pipe.incr(key)
            with pytest.raises(ConnectionError):
                await pipe.execute()
        finally:
            await no_retry.aclose()
        assert fault.count == 1
        # Everything in the write ran: the commands before the matched one (whose replies
        # the client got), the matched one, and the one after it (sent in the same write).
        assert await redis.mget("a", "b", "c") == [b"1", b"1", b"1"]

        # With the service's retry, redis-py re-sends the pipeline whole: every command in
        # it runs twice, also those whose replies had arrived before the connection dropped.
        again = proxy.drop_reply(lambda args: args[:2] == [b"INCRBY", b"b"])
        pipe = client.pipeline(transaction=False)
        for key in "abc":
            pipe.incr(key)
        assert await pipe.execute() == [3, 3, 3]
        assert again.count == 1
        assert await redis.mget("a", "b", "c") == [b"3", b"3", b"3"]


async def test_hang_holds_replies_until_release(redis_server: RedisServer, redis: Redis) -> None:
    async with proxied(redis_server) as (proxy, client), asyncio.timeout(DEADLINE):
        assert await client.ping() is True
        proxy.hang()
        pipe = client.pipeline(transaction=False)
        pipe.set("k", "v")
        pipe.get("k")
        pending = asyncio.create_task(pipe.execute())

        await until_value(redis, "k", b"v")  # Redis executes the commands meanwhile
        assert await redis.ping() is True
        assert not pending.done()

        proxy.release()
        assert await pending == [True, b"v"]
        assert await client.get("k") == b"v"


async def test_hang_after_a_matching_reply(redis_server: RedisServer, redis: Redis) -> None:
    async with proxied(redis_server) as (proxy, client), asyncio.timeout(DEADLINE):
        fault = proxy.hang_after(command("SET"))
        pending = asyncio.ensure_future(client.set("k", "v"))
        await fault.fired.wait()
        assert not proxy.hung  # only that connection is held
        assert await redis.get("k") == b"v"
        assert not pending.done()

        proxy.release()
        assert await pending is True
        assert fault.commands == [[b"SET", b"k", b"v"]]


async def test_a_late_reply_is_resent_after_the_socket_timeout(
    redis_server: RedisServer, redis: Redis
) -> None:
    """redis-py retries on TimeoutError too: a reply later than the socket timeout makes it
    send the command again on a new connection, as a lost reply does."""
    async with FaultProxy("127.0.0.1", redis_server.port) as proxy, asyncio.timeout(DEADLINE):
        client = create_redis(Settings(redis_url=proxy.url, redis_timeout_seconds=0.2))
        try:
            assert await client.ping() is True
            fault = proxy.hang_after(command("INCR"))
            pending = asyncio.create_task(incr(client, "k"))
            await until_value(redis, "k", b"2")  # the first try timed out, the second ran
            assert fault.count == 1
            proxy.release()
            assert await pending == 2
            assert proxy.commands_seen(b"INCR") == 2
        finally:
            await client.aclose()


async def test_close_all_drops_connections(redis_server: RedisServer) -> None:
    async with proxied(redis_server) as (proxy, client), asyncio.timeout(DEADLINE):
        assert await client.ping() is True
        proxy.close_all()
        assert await client.ping() is True  # a new connection (after a retry at most)
        assert proxy.commands_seen(b"PING") >= 2


async def test_resp3_reply_boundaries(redis_server: RedisServer, redis: Redis) -> None:
    """Several RESP3 reply types and a reply larger than one read, pipelined in one write:
    the client gets every reply before the matched one, then the connection closes."""
    big = b"x" * 200_000
    before = [
        [b"HELLO", b"3"],
        [b"HSET", b"h", b"f", b"v"],
        [b"HGETALL", b"h"],
        [b"SADD", b"s", b"m"],
        [b"SMEMBERS", b"s"],
        [b"ZADD", b"z", b"1.5", b"m"],
        [b"ZSCORE", b"z", b"m"],
        [b"GET", b"missing"],
        [b"EVAL", b"return {1, {2, {3}}, 'x'}", b"0"],
        [b"SET", b"big", big],
        [b"GET", b"big"],
    ]
    async with FaultProxy("127.0.0.1", redis_server.port) as proxy, asyncio.timeout(DEADLINE):
        fault = proxy.drop_reply(command("INCR"))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"".join(resp(*c) for c in [*before, [b"INCR", b"n"], [b"PING"]]))
            received = await reader.read()  # up to the proxy's close
        finally:
            writer.close()
            await writer.wait_closed()

    pos, replies = 0, 0
    while pos < len(received):
        end = reply_end(received, pos)
        assert end is not None
        pos, replies = end, replies + 1
    assert replies == len(before)
    assert received.startswith(b"%")  # HELLO 3's map
    assert received.endswith(b"$%d\r\n%s\r\n" % (len(big), big))
    assert fault.count == 1
    assert await redis.get("n") == b"1"


@pytest.mark.parametrize(
    "frame",
    [
        b"+OK\r\n",
        b"-ERR no\r\n",
        b":42\r\n",
        b"$5\r\nhe\r\no\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n*-1\r\n$0\r\n\r\n",
        b"_\r\n",
        b",1.5\r\n",
        b"#t\r\n",
        b"(12345678901234567890\r\n",
        b"!9\r\nERR oops!\r\n",
        b"=8\r\ntxt:abcd\r\n",
        b"%2\r\n+a\r\n:1\r\n+b\r\n~1\r\n:2\r\n",
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
        b"|1\r\n+ttl\r\n:3\r\n*1\r\n:7\r\n",
    ],
)
def test_reply_end(frame: bytes) -> None:
    assert reply_end(frame) == len(frame)
    assert reply_end(b"+before\r\n" + frame + b"+after\r\n", 9) == 9 + len(frame)
    for cut in range(len(frame)):
        assert reply_end(frame[:cut]) is None


def test_parse_command() -> None:
    data = resp(b"SET", b"k", b"a\r\nb") + resp(b"GET", b"k")
    assert parse_command(data) == ([b"SET", b"k", b"a\r\nb"], len(resp(b"SET", b"k", b"a\r\nb")))
    first_end = len(resp(b"SET", b"k", b"a\r\nb"))
    assert parse_command(data, first_end) == ([b"GET", b"k"], len(data))
    for cut in range(1, first_end):
        assert parse_command(data[:cut]) is None
    assert parse_command(b"PING\r\n") == ([b"PING"], 6)
    with pytest.raises(RespError):
        parse_command(b"*1\r\n:1\r\n")
    with pytest.raises(RespError):
        reply_end(b"?1\r\n")
