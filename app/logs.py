"""Logging: one JSON object per line, carrying who and what each line is about.

Context travels in context variables: the request id (set per request), the tenant, the
session, the run and the fence (bound where they become known). asyncio copies the
context into tasks created from it, so a holder's lines carry its session and run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FIELDS = ("request_id", "tenant", "session", "run", "fence")
_context: ContextVar[dict[str, Any] | None] = ContextVar("leasegate_log_context", default=None)


def bind(**values: Any) -> None:
    """Add fields to every line logged from here on, in this task and the tasks it starts."""
    _context.set({**(_context.get() or {}), **{k: v for k, v in values.items() if v is not None}})


def replace(**values: Any) -> None:
    """Start this task's context afresh (a holder task outlives the request that made it)."""
    _context.set({k: v for k, v in values.items() if v is not None})


@contextlib.contextmanager
def bound(**values: Any) -> Iterator[None]:
    token = _context.set({**(_context.get() or {}), **values})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._worker = f"{socket.gethostname()}:{os.getpid()}"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "worker": self._worker,
        }
        line.update(_context.get() or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, fmt: str = "json") -> None:
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_leasegate", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._leasegate = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s")
        )
    root.setLevel(level.upper())
