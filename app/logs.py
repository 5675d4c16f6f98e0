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
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            line.update(_access_fields(record.args))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _access_fields(args: tuple[Any, ...]) -> dict[str, Any]:
    """uvicorn's access-log arguments: client, method, path, HTTP version, status."""
    if len(args) != 5:
        return {}
    client, method, path, _, status = args
    return {"client": client, "method": method, "path": path, "status": status}


def configure(level: str, fmt: str = "json") -> None:
    """leasegate's lines (root logger) and, for JSON, uvicorn's own handlers, which uvicorn
    configured before the app was built: every line one JSON object, its access log too."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_leasegate", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._leasegate = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else text_formatter())
    root.setLevel(level.upper())
    if fmt == "json":
        for name in UVICORN_LOGGERS:
            for uvicorn_handler in logging.getLogger(name).handlers:
                if not isinstance(uvicorn_handler.formatter, JsonFormatter):
                    uvicorn_handler.setFormatter(JsonFormatter())


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def text_formatter() -> logging.Formatter:
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s")


def uvicorn_log_config(fmt: str) -> dict[str, Any] | None:
    """uvicorn's logging for `leasegate serve` (its supervisor and its workers): JSON lines,
    or uvicorn's own format (None: keep uvicorn's default)."""
    if fmt != "json":
        return None
    stream = {"class": "logging.StreamHandler", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
        "handlers": {
            "default": {**stream, "stream": "ext://sys.stderr"},
            "access": {**stream, "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def startup_line(text: str, level: str = "ERROR") -> str:
    """A line written before the settings could be read (they may be what is wrong): JSON
    unless LEASEGATE_LOG_FORMAT is `text`, as the settings would have it."""
    if os.environ.get("LEASEGATE_LOG_FORMAT", "json") == "text":
        return f"leasegate: {text}"
    record = logging.LogRecord(
        "leasegate", logging.getLevelNamesMapping()[level], "", 0, text, (), None
    )
    return JsonFormatter().format(record)
