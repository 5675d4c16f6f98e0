"""What travels between leasegate and an AG-UI agent: the RunAgentInput leasegate POSTs for a
run, and the events it accepts back, each validated with the `ag-ui-protocol` models.

The input, camelCase on the wire:

    threadId        the session id            runId       the run id
    messages        the session's earlier turns, oldest first (user messages; the
                    assistant's tool calls with the tools' answers; assistant replies),
                    then the new user message; ids `<run id>:user`, `<run id>:assistant`,
                    `<run id>:tools`, `<run id>:tool:<tool call id>`
    state {}, tools [], context []
    forwardedProps  {"leasegate": {agent_id, tenant, session_id, run_id, fence, generation,
                     metadata, subscription: {id, base_url, api_key} | null}}

The subscription's key travels in the body only; no message built here contains it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from ag_ui.core import (
    PROTOCOL_VERSION,
    AssistantMessage,
    Event,
    FunctionCall,
    Message,
    RunAgentInput,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from app.agents.base import AgentRequest, Turn
from app.agents.upstream import redact, short

EVENTS: TypeAdapter[Event] = TypeAdapter(Event)
"""Validates one event of any type (a union discriminated by `type`)."""
ERRORS_SHOWN = 3
"""Field errors of one invalid event named in its message."""


@dataclass(frozen=True, slots=True)
class RunIds:
    thread_id: str
    run_id: str

    @classmethod
    def of(cls, request: AgentRequest) -> RunIds:
        """The session and run ids; made up for a request outside a session (tests, tools)."""
        if request.run is not None:
            return cls(request.run.session_id, request.run.run_id)
        made_up = f"adhoc-{uuid.uuid4().hex}"
        return cls(made_up, made_up)


def run_input(
    request: AgentRequest, history: list[Turn], ids: RunIds, state: dict[str, Any] | None = None
) -> RunAgentInput:
    messages = conversation(history)
    messages.append(UserMessage(id=f"{ids.run_id}:user", content=request.text))
    return RunAgentInput(
        thread_id=ids.thread_id,
        run_id=ids.run_id,
        protocol_version=PROTOCOL_VERSION,
        state=state or {},
        messages=messages,
        tools=[],
        context=[],
        forwarded_props={"leasegate": _leasegate_props(request, ids)},
    )


def parse_event(payload: str, secrets: tuple[str, ...]) -> Event | str:
    """The event in one server-sent event's data, or (a str) what is wrong with it: a short
    description, never the payload, which may echo the input and its key."""
    try:
        return EVENTS.validate_json(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        return redact(short(_invalid(errors, payload)), secrets)


def conversation(history: list[Turn]) -> list[Message]:
    """A session's turns as AG-UI messages: a run's tool calls become one assistant message
    with `toolCalls`, each tool's answer a tool message."""
    messages: list[Message] = []
    calls: list[ToolCall] = []
    for turn in history:
        if turn.role == "tool_call":
            function = FunctionCall(name=turn.name or "", arguments=turn.args or "")
            calls.append(ToolCall(id=turn.tool_call_id or "", function=function))
            continue
        if calls:
            messages.append(AssistantMessage(id=f"{turn.run_id}:tools", tool_calls=calls))
            calls = []
        if turn.role == "tool":
            messages.append(
                ToolMessage(
                    id=f"{turn.run_id}:tool:{turn.tool_call_id}",
                    tool_call_id=turn.tool_call_id or "",
                    content=turn.text,
                )
            )
        elif turn.role == "user":
            messages.append(UserMessage(id=f"{turn.run_id}:user", content=turn.text))
        elif turn.role == "assistant":
            messages.append(AssistantMessage(id=f"{turn.run_id}:assistant", content=turn.text))
    if calls:
        messages.append(AssistantMessage(id=f"{history[-1].run_id}:tools", tool_calls=calls))
    return messages


def _leasegate_props(request: AgentRequest, ids: RunIds) -> dict[str, Any]:
    run = request.run
    subscription = request.subscription
    return {
        "agent_id": request.agent_id,
        "tenant": run.tenant if run else None,
        "session_id": run.session_id if run else None,
        "run_id": ids.run_id,
        "fence": run.fence if run else None,
        "generation": run.generation if run else None,
        "metadata": request.metadata,
        "subscription": None
        if subscription is None
        else {
            "id": subscription.id,
            "base_url": subscription.base_url,
            "api_key": subscription.api_key,
        },
    }


def _invalid(errors: list[ErrorDetails], payload: str) -> str:
    if not errors:
        return "an event that does not validate"
    first = errors[0]["type"]
    if first == "json_invalid":
        return "an event that is not JSON"
    if first in ("dict_type", "model_type", "model_attributes_type"):
        return "an event that is not a JSON object"
    if first == "union_tag_not_found":
        return 'an event without a "type"'
    if first == "union_tag_invalid":
        return f"an event of unknown type {_type_of(payload)!r}"
    kind = str(errors[0]["loc"][0]) if errors[0]["loc"] else _type_of(payload)
    fields = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][1:]) or 'event'}: {e['msg']}"
        for e in errors[:ERRORS_SHOWN]
    )
    return f"an invalid {kind} event ({fields})"


def _type_of(payload: str) -> str:
    try:
        parsed = json.loads(payload)
    except ValueError:
        return "?"
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return short(str(kind))[:60]
