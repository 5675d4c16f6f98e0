"""The AG-UI agent of the service benchmark: a Pydantic AI agent whose model is a plain
function (FunctionModel, no LLM) that answers a short text at once, served over AG-UI by
pydantic-ai's adapter, in a uvicorn process of its own (bench/procs.py starts it):

    uvicorn --factory bench.agui_agent:create_app --port P

    POST /agent    a RunAgentInput; answers a server-sent-event stream of AG-UI events that
                   replies "ok: <the last user text>"
    GET  /readyz   200 (what bench/procs.py polls)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.ui.ag_ui import AGUIAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

PATH = "/agent"


def _last_user_text(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


async def _reply(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    yield "ok: "
    yield _last_user_text(messages)


AGENT = Agent(FunctionModel(stream_function=_reply))


async def _run(request: Request) -> Response:
    return await AGUIAdapter.dispatch_request(request, agent=AGENT)


async def _ready(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app() -> Starlette:
    return Starlette(
        routes=[Route(PATH, _run, methods=["POST"]), Route("/readyz", _ready, methods=["GET"])]
    )
