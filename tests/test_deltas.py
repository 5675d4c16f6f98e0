"""Reply deltas: batched, in order, and the unsent tail handed to the outcome."""

from __future__ import annotations

import asyncio

from app.sessions import deltas
from app.sessions.deltas import DeltaBuffer
from tests.support.waiting import wait_until


async def test_deltas_are_batched_in_order_and_the_tail_is_returned() -> None:
    sent: list[str] = []
    writes_begun: list[str] = []
    gate = asyncio.Event()
    gate.set()

    async def send(text: str) -> None:
        writes_begun.append(text)
        await gate.wait()
        sent.append(text)

    buffer = DeltaBuffer(send)
    buffer.add("a")
    buffer.add("b")

    async def flushed(count: int) -> bool:
        return len(sent) >= count

    await wait_until(lambda: flushed(1), what="the first batch")
    assert sent == ["ab"]
    gate.clear()  # the next write hangs until released
    buffer.add("c")

    async def slow_write_begun() -> bool:
        return writes_begun[-1:] == ["c"]

    await wait_until(slow_write_begun, what="the write of 'c' to begin")
    buffer.add("d")  # arrives while that write hangs
    gate.set()
    await wait_until(lambda: flushed(3), what="the batches after a slow write")
    assert "".join(sent) == "abcd" and sent[1] == "c"
    buffer.add("e")
    assert await buffer.drain() == "e"  # a fast end: the tail rides with the outcome
    await asyncio.sleep(deltas.FLUSH_DELAY * 2)  # a negative check: nothing more is written
    assert "".join(sent) == "abcd"
