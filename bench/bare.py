"""The bare endpoint the service benchmark compares leasegate with.

`uvicorn --factory bench.bare:create_app`: a FastAPI app whose one route validates the same
message body as leasegate's `POST /v1/sessions/{session_id}/messages` (a pydantic model
mirroring `app.routers.schemas.MessageIn`) and answers 202 at once, touching nothing else:
no Redis, no middleware, no run. `/readyz` answers 200 so that it starts like leasegate.
"""

from __future__ import annotations

import json
import uuid
from enum import StrEnum
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_METADATA_BYTES = 8 * 1024


class BusyPolicy(StrEnum):
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"
    REJECT = "reject"


def _metadata_size(value: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes serialized; at most {MAX_METADATA_BYTES}")
    return value


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=32_000)
    busy_policy: BusyPolicy | None = None
    agent_id: str | None = Field(default=None, min_length=1, max_length=64)
    metadata: Annotated[dict[str, Any], AfterValidator(_metadata_size)] = Field(
        default_factory=dict
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


def create_app() -> FastAPI:
    app = FastAPI(title="bare", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/sessions/{session_id}/messages", status_code=202)
    async def post_message(session_id: str, body: MessageIn) -> JSONResponse:
        return JSONResponse(
            {
                "run_id": uuid.uuid4().hex,
                "session_id": session_id,
                "status": "running",
                "queue_position": 0,
            },
            status_code=202,
        )

    return app
