"""The message an AG-UI `RunAgentInput` asks leasegate to run.

`threadId` is the session id (within the caller's tenant). The text is the last user
message's: leasegate keeps the conversation in the session's transcript, so the earlier
messages a frontend sends along are not read, nor are `tools`, `context` and `state`.
leasegate's own options travel in `forwardedProps.leasegate`:
`{busy_policy?, idempotency_key?, metadata?}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ag_ui.core import RunAgentInput, TextPart, UserMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import AgentInputError, IdempotencyConflictError
from app.keys import checked_session_id
from app.sessions.models import BusyPolicy

MAX_TEXT = 32_000  # as a message posted to /v1/sessions/{id}/messages


class LeasegateProps(BaseModel):
    """`forwardedProps.leasegate`: what the messages endpoint takes beside the text."""

    model_config = ConfigDict(extra="forbid")

    busy_policy: BusyPolicy | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ThreadMessage:
    thread_id: str
    text: str
    busy_policy: BusyPolicy | None
    idempotency_key: str | None
    metadata: dict[str, Any]
    client_run_id: str
    """The frontend's `runId`: informational, the run gets leasegate's own id."""


def read_message(
    body: RunAgentInput,
    *,
    busy_policy: BusyPolicy | None = None,
    idempotency_key: str | None = None,
) -> ThreadMessage:
    """The message of `body`; `busy_policy` and `idempotency_key` come from the request
    (query, header) and must agree with `forwardedProps.leasegate` where both are given."""
    thread_id = checked_session_id(body.thread_id)
    props = _props(body.forwarded_props)
    if props.busy_policy and busy_policy and props.busy_policy != busy_policy:
        raise AgentInputError("busy_policy differs between the query and forwardedProps.leasegate")
    if props.idempotency_key and idempotency_key and props.idempotency_key != idempotency_key:
        raise IdempotencyConflictError(
            "the Idempotency-Key header and forwardedProps.leasegate.idempotency_key differ"
        )
    return ThreadMessage(
        thread_id=thread_id,
        text=_last_user_text(body),
        busy_policy=props.busy_policy or busy_policy,
        idempotency_key=props.idempotency_key or idempotency_key,
        metadata=props.metadata,
        client_run_id=body.run_id,
    )


def _props(forwarded: Any) -> LeasegateProps:
    raw = forwarded.get("leasegate") if isinstance(forwarded, dict) else None
    if raw is None:
        return LeasegateProps()
    try:
        return LeasegateProps.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'leasegate'}: {e['msg']}" for e in exc.errors()
        )
        raise AgentInputError(f"forwardedProps.leasegate is not valid: {problems}") from None


def _last_user_text(body: RunAgentInput) -> str:
    user = next((m for m in reversed(body.messages) if isinstance(m, UserMessage)), None)
    if user is None:
        raise AgentInputError("messages holds no user message")
    content = user.content
    if isinstance(content, str):
        text = content
    else:
        text = "\n".join(part.text for part in content if isinstance(part, TextPart))
    if not text.strip():
        raise AgentInputError("the last user message has no text")
    if len(text) > MAX_TEXT:
        raise AgentInputError(
            f"the last user message is {len(text)} characters; at most {MAX_TEXT}"
        )
    return text
