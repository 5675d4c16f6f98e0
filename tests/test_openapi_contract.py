"""The OpenAPI document holds every route, present and future, to the API contract.

Each operation has a summary, a description and a documented answer model (or its own
media type: server-sent events, Prometheus text); each error it can answer is an
`application/problem+json` ProblemDocument, 422 included (never FastAPI's
HTTPValidationError); the routes behind credentials name their security scheme.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from app.deps import get_caller, get_internal, get_session_call
from app.main import create_app
from app.openapi import api_routes
from app.routers.models.problem import PROBLEM_JSON
from tests.support.api import app_client
from tests.support.servers import INTERNAL_SECRET
from tests.support.settings import make_settings

PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDocument"}
STREAMS = {"text/event-stream", "text/plain"}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    # No lifespan: the document needs no Redis.
    return create_app(make_settings("redis://127.0.0.1:1/0", internal_secret=INTERNAL_SECRET))


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(app: FastAPI, document: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    for route in api_routes(app):
        for method in sorted(route.methods):
            name = f"{method} {route.path_format}"
            yield name, route, document["paths"][route.path_format][method.lower()]


def test_every_operation_has_a_summary_a_description_and_an_answer_model(
    app: FastAPI, document: dict[str, Any]
) -> None:
    missing = []
    for name, route, operation in operations(app, document):
        if not route.summary:
            missing.append(f"{name}: no summary= (FastAPI would make one of the function name)")
        if not (route.description or "").strip():
            missing.append(f"{name}: no description (description= or a docstring)")
        successes = {code: r for code, r in operation["responses"].items() if code < "300"}
        if not successes:
            missing.append(f"{name}: no 2xx answer documented")
        for code, response in successes.items():
            content = response.get("content") or {}
            if not content:
                missing.append(f"{name} {code}: no content")
            for media_type, body in content.items():
                schema = body.get("schema", {})
                if media_type in STREAMS:
                    continue
                if "$ref" not in schema:
                    missing.append(f"{name} {code} {media_type}: no model ({schema})")
    assert not missing, "\n".join(missing)


def test_every_error_is_a_problem_document(app: FastAPI, document: dict[str, Any]) -> None:
    wrong = []
    for name, _, operation in operations(app, document):
        responses = operation["responses"]
        takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
        if takes_input and "422" not in responses:
            wrong.append(f"{name}: takes input but documents no 422")
        for code, response in responses.items():
            if int(code) >= 400 and response.get("content") != {
                PROBLEM_JSON: {"schema": PROBLEM_REF}
            }:
                wrong.append(f"{name} {code}: {response.get('content')}")
    assert not wrong, "\n".join(wrong)
    text = json.dumps(document)
    assert "HTTPValidationError" not in text
    assert '"ValidationError"' not in text
    problem = document["components"]["schemas"]["ProblemDocument"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "instance"}


def test_credentials_are_security_schemes_docs_can_send(
    app: FastAPI, document: dict[str, Any]
) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == schemes["ApiKey"] | {"type": "http", "scheme": "bearer"}
    assert schemes["InternalSecret"] == schemes["InternalSecret"] | {
        "type": "apiKey",
        "in": "header",
        "name": "X-Internal-Secret",
    }
    wrong = []
    seen = set()
    expected: list[dict[str, list[str]]]
    for name, route, operation in operations(app, document):
        calls = {dependency.call for dependency in route.dependant.dependencies}
        if get_internal in calls:
            expected, errors = [{"InternalSecret": []}], {"401", "403", "404", "503"}
        elif calls & {get_caller, get_session_call}:
            expected, errors = [{"ApiKey": []}], {"401", "403", "503"}
        else:
            continue
        seen.add(route.path_format.split("/")[1])
        if operation.get("security") != expected:
            wrong.append(f"{name}: security {operation.get('security')}, expected {expected}")
        if not errors <= operation["responses"].keys():
            wrong.append(f"{name}: documents {sorted(operation['responses'])}, not all {errors}")
    assert not wrong, "\n".join(wrong)
    assert {"v1", "internal"} <= seen


def test_streams_and_metrics_carry_their_own_media_types(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for path, method in [
        ("/v1/sessions/{session_id}/events", "get"),
        ("/v1/agents/{agent_id}/ag-ui", "post"),
    ]:
        assert list(paths[path][method]["responses"]["200"]["content"]) == ["text/event-stream"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


async def test_the_served_document_is_the_refined_one(redis_server: Any) -> None:
    async with app_client(redis_server.url, internal_secret=INTERNAL_SECRET) as api:
        served = (await api.get("/openapi.json")).json()
        docs = await api.get("/docs")
    assert served == api.app.openapi()
    assert "securitySchemes" in served["components"]
    assert docs.status_code == 200
