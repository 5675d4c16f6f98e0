"""The problem document every error answers, and the declarations routes use for it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_JSON = "application/problem+json"


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, `query`, `header`, then the name.")
    msg: str
    type: str


class ProblemDocument(BaseModel):
    """An RFC 9457 problem document; context goes in extension members."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="`/problems/<slug>`, one per kind of problem.")
    title: str
    status: int = Field(ge=400, le=599, description="The HTTP status code of the answer.")
    detail: str = Field(description="What went wrong (every string here is cut to 200 characters).")
    instance: str = Field(description="The request's path.")
    errors: list[ValidationIssue] | None = Field(
        default=None, description="422 `validation`: each invalid input."
    )
    session_id: str | None = None
    active_run_id: str | None = None
    run_id: str | None = None
    run_status: str | None = None
    agent_id: str | None = None
    execution_id: str | None = None


ERROR_DESCRIPTIONS = {
    400: "The request could not be read.",
    401: "No credentials, or another scheme than `Bearer`.",
    403: "The credentials are not valid.",
    404: "Not found (another tenant's resource answers as one that does not exist).",
    409: "Conflicts with the resource's state or an earlier request.",
    422: "Invalid input: parameters, body, duplicate headers, NaN or Infinity; nothing changed.",
    429: "The session's queue is full (`Retry-After`).",
    502: "The agent failed.",
    503: "Redis is unreachable or this worker is shutting down (`Retry-After`); nothing changed.",
}


def problem_content() -> dict[str, Any]:
    return {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDocument"}}}


def errors(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the problems a route answers beyond those of its
    authentication and input (app/openapi.py adds those): `errors(404, 409)`, or with a
    route's own wording, `errors(**{"409": "The run already ended."})`."""
    chosen = {status: ERROR_DESCRIPTIONS[status] for status in statuses}
    chosen |= {int(status): text for status, text in described.items()}
    return {
        status: {"description": text, "content": problem_content()}
        for status, text in sorted(chosen.items())
    }


def answers(
    model: type[BaseModel],
    *statuses: int,
    status: int = 200,
    description: str = "Success.",
    **described: str,
) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route answering `model` with `status`, and these problems."""
    return {status: {"model": model, "description": description}} | errors(*statuses, **described)
