"""Reply deltas: batched, in order, each write saying where in the reply it starts; the
tail left at the end is sent by the outcome, never by the buffer."""

from __future__ import annotations

import asyncio

from app.errors import RedisUnavailableError
from app.sessions.deltas import DeltaBuffer
from tests.support.waiting import wait_until


async def test_deltas_are_batched_in_order_with_their_offsets() -> None:
    sent: list[tuple[int, str]] = []
    writes_begun: list[str] = []
    gate = asyncio.Event()
    gate.set()

    async def send(offset: int, text: str) -> None:
        writes_begun.append(text)
        await gate.wait()
        sent.append((offset, text))

    buffer = DeltaBuffer(send)
    buffer.add("a")
    buffer.add("é")  # two bytes: offsets count bytes, as the scripts do

    async def flushed(count: int) -> bool:
        return len(sent) >= count

    await wait_until(lambda: flushed(1), what="the first batch")
    assert sent == [(0, "aé")]
    gate.clear()  # the next write hangs until released
    buffer.add("c")

    async def slow_write_begun() -> bool:
        return writes_begun[-1:] == ["c"]

    await wait_until(slow_write_begun, what="the write of 'c' to begin")
    buffer.add("d")  # arrives while that write hangs
    gate.set()
    await wait_until(lambda: flushed(3), what="the batches after a slow write")
    assert sent == [(0, "aé"), (3, "c"), (4, "d")]
    buffer.add("e")
    await buffer.drain()  # a fast end: the outcome sends the tail
    buffer.add("f")  # after the end: ignored
    assert sent == [(0, "aé"), (3, "c"), (4, "d")] and writes_begun[-1] == "d"


async def test_a_write_redis_refused_is_sent_again_from_the_same_byte() -> None:
    sent: list[tuple[int, str]] = []
    failures = [RedisUnavailableError()]

    async def send(offset: int, text: str) -> None:
        if failures:
            raise failures.pop()
        sent.append((offset, text))

    buffer = DeltaBuffer(send)
    buffer.add("ab")

    async def attempted() -> bool:
        return not failures

    await wait_until(attempted, what="the first, failing write")
    buffer.add("c")

    async def resent() -> bool:
        return bool(sent)

    await wait_until(resent, what="the write after the failure")
    assert sent == [(0, "abc")]
    await buffer.drain()
