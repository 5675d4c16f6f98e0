"""An ag-ui agent's extra request headers (`headers_env` in the agents file), read from the
environment at start-up and checked: a JSON object of valid header names, none of them a
header leasegate sets itself, each value a string on one line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from app.errors import AgentsConfigError

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
RESERVED_HEADERS = frozenset(
    {
        "accept",
        "connection",
        "content-length",
        "content-type",
        "host",
        "idempotency-key",
        "leasegate-fence",
        "transfer-encoding",
    }
)
"""Headers an ag-ui request carries from leasegate itself, which headers_env cannot replace."""


def headers_from_env(
    agent_id: str, variable: str, environ: Mapping[str, str], path: Path
) -> dict[str, str]:
    """The JSON object of extra headers in the environment variable `variable` (the agent's
    `headers_env`). Messages name the variable and the header, never a value (values may
    be secrets)."""
    where = f"agents file {path}: ag-ui agent {agent_id!r}: environment variable {variable}"
    raw = environ.get(variable)
    if not raw:
        raise AgentsConfigError(f"{where} (headers_env) is not set")
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise AgentsConfigError(f"{where} is not JSON (expected an object of headers)") from None
    if not isinstance(parsed, dict):
        raise AgentsConfigError(f"{where} is not a JSON object of headers")
    for name, value in parsed.items():
        if not HEADER_NAME.match(name):
            raise AgentsConfigError(f"{where}: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise AgentsConfigError(f"{where}: header {name!r} is set by leasegate itself")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise AgentsConfigError(
                f"{where}: the value of header {name!r} must be a string on one line"
            )
    return parsed
