"""A Pydantic AI agent served over AG-UI, for leasegate's `ag-ui` backend. Offline: its model
is a FunctionModel (plain Python, no LLM), which calls one tool and then answers.

    .venv/bin/python -m examples.pydantic_agent        # http://127.0.0.1:8001/agent

The tool writes a note to the agent's own storage, fenced: leasegate gives every run a
fence higher than every earlier run's of the session (forwardedProps.leasegate.fence, and
the Leasegate-Fence header), so the store keeps the highest fence it has seen per session
and refuses a write that carries a lower one: the late write of a run that was stopped,
superseded or taken over can never overwrite a newer run's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.ui.ag_ui import AGUIAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PORT = 8001


@dataclass(frozen=True)
class Run:
    """What this agent's tools need to know about the leasegate run they serve."""

    session_id: str
    fence: int


class FencedNotes:
    """The agent's own storage: one note per session, written only by the newest run."""

    def __init__(self) -> None:
        self._notes: dict[str, tuple[int, str]] = {}

    def write(self, run: Run, note: str) -> str:
        fence, _ = self._notes.get(run.session_id, (0, ""))
        if run.fence < fence:
            return f"refused: fence {run.fence} is older than {fence}"
        self._notes[run.session_id] = (run.fence, note)
        return f"saved under fence {run.fence}"


NOTES = FencedNotes()


async def model(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls]:
    """First call the `remember` tool with the user's text, then answer with its result."""
    last = messages[-1]
    returned = [p for p in getattr(last, "parts", []) if isinstance(p, ToolReturnPart)]
    if returned:
        turns = sum(
            isinstance(p, UserPromptPart)
            for m in messages
            if isinstance(m, ModelRequest)
            for p in m.parts
        )
        yield f"Noted ({returned[0].content}). "
        yield f"That was message {turns} of this conversation."
        return
    text = next(
        p.content
        for m in reversed(messages)
        if isinstance(m, ModelRequest)
        for p in m.parts
        if isinstance(p, UserPromptPart) and isinstance(p.content, str)
    )
    yield {0: DeltaToolCall(name="remember", json_args=json.dumps({"note": text}))}


agent = Agent(FunctionModel(stream_function=model), deps_type=Run)


@agent.tool
def remember(ctx: RunContext[Run], note: str) -> str:
    """Keep a note about the conversation."""
    return NOTES.write(ctx.deps, note)


async def run_agent(request: Request) -> Response:
    body = await request.json()  # Starlette keeps the body: the adapter reads it again
    leasegate = (body.get("forwardedProps") or {}).get("leasegate") or {}
    run = Run(session_id=body["threadId"], fence=int(leasegate.get("fence") or 0))
    return await AGUIAdapter.dispatch_request(request, agent=agent, deps=run)


app = Starlette(routes=[Route("/agent", run_agent, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT)
