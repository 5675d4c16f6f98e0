"""Stopping background tasks for sure.

On Python 3.11 a cancellation that lands just as an inner `asyncio.timeout` expires (redis-py
puts one around every socket read) can be swallowed: the task goes on as if nothing had
happened. A loop that must stop is therefore cancelled again until it is done, and checks a
flag of its own as well.
"""

from __future__ import annotations

import asyncio

RETRY = 0.1


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None]) -> None:
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=RETRY)
