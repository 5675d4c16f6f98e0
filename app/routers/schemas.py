"""Request bodies of the HTTP API."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.sessions.models import BusyPolicy

MAX_METADATA_BYTES = 8 * 1024


def _metadata_size(value: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes serialized; at most {MAX_METADATA_BYTES}")
    return value


MetadataField = Annotated[dict[str, Any], AfterValidator(_metadata_size)]


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=32_000)
    busy_policy: BusyPolicy | None = None
    agent_id: str | None = Field(default=None, min_length=1, max_length=64)
    metadata: MetadataField = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
