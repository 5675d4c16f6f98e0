"""Request bodies of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.sessions.models import BusyPolicy

MetadataField = dict[str, Any]
"""Free JSON for the agent; its size is checked where it is serialised, at admission."""


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=32_000)
    busy_policy: BusyPolicy | None = None
    agent_id: str | None = Field(default=None, min_length=1, max_length=64)
    metadata: MetadataField = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
