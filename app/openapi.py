"""The OpenAPI document: what every route answers, derived where it can be.

Routes declare their answer models and their own problems (`app.routers.models`). What
follows from how a route is called is added here, for every route alike, so a new route
inherits it: the security scheme and the 401/403 (and, behind the internal secret, 404
while it is unset) of its credentials dependency, 503 where it reaches Redis, 422 where
it takes any input. Every error is documented as an `application/problem+json`
ProblemDocument (FastAPI's own HTTPValidationError is never used: a 422 is a problem
document too), and streaming answers carry their own media type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from sse_starlette import EventSourceResponse

from app.deps import get_caller, get_internal, get_session_call
from app.routers.models.problem import ERROR_DESCRIPTIONS, ProblemDocument, problem_content

SECURITY_SCHEMES = {
    "ApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of `LEASEGATE_API_KEYS`; its tenant owns what it touches.",
    },
    "InternalSecret": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Internal-Secret",
        "description": "`LEASEGATE_INTERNAL_SECRET` (`Authorization: Bearer` is accepted too).",
    },
}
SSE = "text/event-stream"
TENANT_ERRORS = (401, 403, 503)
INTERNAL_ERRORS = (401, 403, 404, 503)
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

_RUN_ID = {"run_id": "$response.body#/run_id"}
_SESSION_ID = {"session_id": "$request.path.session_id"}
LINKS: dict[tuple[str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("POST", "/v1/sessions/{session_id}/messages"): {
        "GetRun": ("GET", "/v1/runs/{run_id}", _RUN_ID),
        "CancelRun": ("POST", "/v1/runs/{run_id}/cancel", _RUN_ID),
        "GetSession": ("GET", "/v1/sessions/{session_id}", _SESSION_ID),
        "ListRuns": ("GET", "/v1/sessions/{session_id}/runs", _SESSION_ID),
        "StopSession": ("POST", "/v1/sessions/{session_id}/stop", _SESSION_ID),
    },
    ("POST", "/internal/execute-task"): {
        "GetExecution": (
            "GET",
            "/internal/executions/{execution_id}",
            {"execution_id": "$response.body#/execution_id"},
        ),
    },
}
"""OpenAPI links from what an answer names to the operations that take it (what a
stateful client, or schemathesis' state machine, follows)."""


def install(app: FastAPI) -> None:
    """Make `app.openapi()` (and /openapi.json, /docs) answer the refined document."""
    generate = app.openapi
    refined: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not refined or refined[0] is not schema:  # FastAPI made it anew: routes changed
            refine(app, schema)
            refined[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def refine(app: FastAPI, schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    problem = ProblemDocument.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["ProblemDocument"] = problem
    components["securitySchemes"] = SECURITY_SCHEMES
    for route in api_routes(app):
        for method in sorted(route.methods):
            _refine_operation(route, schema["paths"][route.path_format][method.lower()])
    _link(schema["paths"])


def api_routes(app: FastAPI) -> Iterator[Any]:
    """Every API route in the document, as mounted (its path and dependencies in full)."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            yield route


def _refine_operation(route: Any, operation: dict[str, Any]) -> None:
    calls = set(_calls(route.dependant))
    responses: dict[str, Any] = operation["responses"]
    implied: tuple[int, ...] = ()
    if get_internal in calls:
        operation["security"] = [{"InternalSecret": []}]
        implied = INTERNAL_ERRORS
    elif calls & {get_caller, get_session_call}:
        operation["security"] = [{"ApiKey": []}]
        implied = TENANT_ERRORS
    if operation.get("parameters") or operation.get("requestBody"):
        implied += (422,)
    for status in implied:
        responses.setdefault(str(status), {"description": ERROR_DESCRIPTIONS[status]})
    media_type = _media_type(route)
    for code, response in responses.items():
        if int(code) >= 400:
            response["content"] = problem_content()
            if int(code) == 422 and response.get("description") == "Validation Error":
                response["description"] = ERROR_DESCRIPTIONS[422]
        elif media_type != JSONResponse.media_type and int(code) < 300:
            response["content"] = {media_type: {"schema": {"type": "string"}}}
    operation["responses"] = dict(sorted(responses.items()))


def _link(paths: dict[str, Any]) -> None:
    for (method, path), links in LINKS.items():
        source = paths.get(path, {}).get(method.lower())
        if source is None:
            continue
        resolved = {
            name: {"operationId": paths[to][to_method.lower()]["operationId"], "parameters": args}
            for name, (to_method, to, args) in links.items()
            if to_method.lower() in paths.get(to, {})
        }
        for code, response in source["responses"].items():
            if code < "300":
                response["links"] = resolved


def _media_type(route: Any) -> str:
    response_class = route.response_class
    response_class = getattr(response_class, "value", response_class)
    if issubclass(response_class, EventSourceResponse):  # its media type is set per answer
        return SSE
    return str(response_class.media_type or JSONResponse.media_type)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)
