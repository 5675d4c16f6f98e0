"""What a run streams: batched, in order, each write numbered; reply text left at the end
is sent by the outcome, structured events left at the end are written before it."""

from __future__ import annotations

import asyncio

from app.errors import RedisUnavailableError
from app.sessions.deltas import DeltaBuffer, Item
from tests.support.waiting import wait_until


async def test_items_are_batched_in_order_and_numbered() -> None:
    sent: list[tuple[int, list[Item]]] = []
    writes_begun: list[list[Item]] = []
    gate = asyncio.Event()
    gate.set()

    async def send(batch: int, items: list[Item]) -> None:
        writes_begun.append(items)
        await gate.wait()
        sent.append((batch, items))

    buffer = DeltaBuffer(send)
    buffer.add("a")
    buffer.add("é")  # adjacent text is one item

    async def flushed(count: int) -> bool:
        return len(sent) >= count

    await wait_until(lambda: flushed(1), what="the first batch")
    assert sent == [(1, [("delta", "aé")])]
    gate.clear()  # the next write hangs until released
    buffer.add("c")

    async def slow_write_begun() -> bool:
        return writes_begun[-1:] == [[("delta", "c")]]

    await wait_until(slow_write_begun, what="the write of 'c' to begin")
    buffer.add("d")  # arrives while that write hangs
    buffer.add_event("tool_call_start", '{"toolCallId":"1"}')
    buffer.add("e")
    gate.set()
    await wait_until(lambda: flushed(3), what="the batches after a slow write")
    assert sent[1:] == [
        (2, [("delta", "c")]),
        (3, [("delta", "d"), ("tool_call_start", '{"toolCallId":"1"}'), ("delta", "e")]),
    ]
    buffer.add("f")
    await buffer.drain()  # a fast end: the outcome sends the text
    assert len(sent) == 3
    buffer.add("g")  # after the end: ignored
    assert len(writes_begun) == 3


async def test_events_left_at_the_end_are_written_before_the_outcome() -> None:
    sent: list[tuple[int, list[Item]]] = []

    async def send(batch: int, items: list[Item]) -> None:
        sent.append((batch, items))

    buffer = DeltaBuffer(send)
    buffer.add("text")
    buffer.add_event("tool_call_result", '{"content":"x"}')
    await buffer.drain()
    assert sent == [(1, [("delta", "text"), ("tool_call_result", '{"content":"x"}')])]


async def test_a_write_redis_refused_is_sent_again_under_the_same_number() -> None:
    sent: list[tuple[int, list[Item]]] = []
    failures = [RedisUnavailableError()]

    async def send(batch: int, items: list[Item]) -> None:
        if failures:
            raise failures.pop()
        sent.append((batch, items))

    buffer = DeltaBuffer(send)
    buffer.add("ab")

    async def attempted() -> bool:
        return not failures

    await wait_until(attempted, what="the first, failing write")
    buffer.add("c")

    async def resent() -> bool:
        return bool(sent)

    await wait_until(resent, what="the write after the failure")
    assert sent == [(1, [("delta", "abc")])]
    await buffer.drain()
