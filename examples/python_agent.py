"""A `python` agent: any object with an async-generator `stream(request)` and `async aclose()`.

The agents file names it `examples.python_agent:ReverseAgent`; leasegate calls the class
once per worker, with no arguments, and runs every run of the agent through the object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.agents import AgentRequest


class ReverseAgent:
    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        earlier = await request.history() if request.history is not None else []
        yield f"(turn {len(earlier) // 2 + 1}) "
        yield request.text[::-1]

    async def aclose(self) -> None:
        """Nothing to close: no connections are kept."""
