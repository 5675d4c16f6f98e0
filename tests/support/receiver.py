"""A webhook receiver on a free port, for the tests: records every POST, answers as told,
and checks each signature the way a receiver would, with the `standardwebhooks` library."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook
from starlette.types import Receive, Scope, Send

from app.redis.server import free_port

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Received:
    webhook_id: str
    body: dict[str, Any]
    verified: bool


@dataclass
class Receiver:
    port: int
    answers: list[int] = field(default_factory=list)
    """Statuses to answer in turn; 200 once they are used up."""
    received: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            Webhook(SECRET).verify(body, headers)
            verified = True
        except Exception:
            verified = False
        self.received.append(Received(headers.get("webhook-id", ""), json.loads(body), verified))
        status = self.answers.pop(0) if self.answers else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def running_receiver(port: int | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(port or free_port())
    config = uvicorn.Config(receiver, host="127.0.0.1", port=receiver.port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield receiver
    finally:
        server.should_exit = True
        await task
