"""Numbers in query strings, read as strictly as JSON reads them.

Pydantic reads `"1_0"` as 10 and `"+5"` as 5, as Python's int() and float() do; a query
parameter carrying one of these validators, after its `Query(...)` (before it, the
bounds would not reach the OpenAPI document), refuses them (422): digits, an optional
leading minus, and for `PLAIN_FLOAT` a fraction, nothing else.

    limit: Annotated[int, Query(ge=1, le=100), PLAIN_INT] = 20
"""

from __future__ import annotations

import re

from pydantic import BeforeValidator

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _plain(pattern: re.Pattern[str], what: str) -> BeforeValidator:
    def check(value: object) -> object:
        if isinstance(value, str) and not pattern.fullmatch(value):
            raise ValueError(f"{what}: digits only (no '+', '_', spaces or exponent)")
        return value

    return BeforeValidator(check)


PLAIN_INT = _plain(_INT, "an integer")
PLAIN_FLOAT = _plain(_FLOAT, "a decimal number")

MAX_OFFSET = 100_000
"""The largest `offset` of GET /v1/sessions/{id}/runs: 422 beyond it."""
