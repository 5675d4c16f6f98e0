"""Why an upstream refused a subscription, and for how long: the one place that knows.

Every refusal is one of three kinds:

    rate_limit  transient: 429 without a quota or billing marker
    quota       a wall until the provider's window resets: 402, or a quota/billing marker
    auth        the key is bad: 401, or 403 with an auth marker; disabled until enabled

MARKERS is the table of the lower-case phrases looked for in a refusal's message, code and
type (`hints`); a 4xx other than 401/402/403/429 (or an error event in a stream, `status`
None) is a refusal only when one of them is there. The cooldown is the provider's when it
gives one (RESET_HEADERS, in order of preference), else None: `Cooldowns` fills in the
configured default for the kind.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Literal

Kind = Literal["rate_limit", "quota", "auth"]
KINDS: tuple[Kind, ...] = ("rate_limit", "quota", "auth")

MARKERS: dict[Kind, tuple[str, ...]] = {
    "quota": (
        "insufficient_quota",
        "quota exceeded",
        "exceeded your current quota",
        "credit balance",
        "usage limit",
        "billing",
        "payment required",
    ),
    "auth": (
        "invalid api key",
        "invalid_api_key",
        "incorrect api key",
        "invalid x-api-key",
        "token expired",
        "authentication",
        "permission_denied",
        "unauthorized",
    ),
    "rate_limit": ("rate limit", "rate_limit", "too many requests"),
}
"""Markers by kind, checked in this order (a quota marker wins over a rate-limit one)."""

RESET_HEADERS = (
    "retry-after-ms",
    "retry-after",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-reset",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
)
"""Headers that say when a refused subscription can be used again. `retry-after(-ms)` wins;
otherwise the latest of the reset headers present."""

EPOCH_THRESHOLD = 1_000_000_000
"""A bare number this large is a Unix time, not a number of seconds."""
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: Kind
    cooldown: float | None
    """Seconds the provider asked for; None: it said nothing (or `auth`, never retried)."""


def classify(
    status: int | None, hints: str, headers: Mapping[str, str] | None = None
) -> Refusal | None:
    """The refusal an answer is, or None if it is another failure. `hints` is lower-case."""
    kind = refusal_kind(status, hints)
    if kind is None:
        return None
    return Refusal(kind, None if kind == "auth" else cooldown_from(headers or {}))


def refusal_kind(status: int | None, hints: str) -> Kind | None:
    marked = next((k for k, words in MARKERS.items() if any(w in hints for w in words)), None)
    if status == 402:
        return "quota"
    if status == 401:
        return "auth"
    if status == 429:
        return "quota" if marked == "quota" else "rate_limit"
    if status is not None and not 400 <= status < 500:
        return None
    if status == 403 and marked == "rate_limit":
        return None  # a 403 is no rate limit, whatever it says
    return marked


def cooldown_from(headers: Mapping[str, str]) -> float | None:
    """Seconds until the provider says the subscription can be used again, if it says."""
    lowered = {name.lower(): value for name, value in headers.items()}
    if (ms := _number(lowered.get("retry-after-ms"))) is not None:
        return ms / 1000
    if (after := _seconds(lowered.get("retry-after"))) is not None:
        return after
    resets = [_seconds(lowered.get(name)) for name in RESET_HEADERS[2:]]
    found = [s for s in resets if s is not None]
    return max(found) if found else None


def _seconds(value: str | None) -> float | None:
    """Seconds in a header value: a number, a duration ("1m30s", "250ms"), a Unix time, an
    HTTP date or an RFC 3339 time."""
    if value is None or not (text := value.strip()):
        return None
    if (number := _number(text)) is not None:
        return max(0.0, number - time.time()) if number >= EPOCH_THRESHOLD else number
    compact = text.replace(" ", "")
    parts = _DURATION.findall(compact)
    if parts and "".join(n + u for n, u in parts) == compact:
        return sum(float(n) * UNITS[u] for n, u in parts)
    return _until(text)


def _until(text: str) -> float | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


@dataclass(frozen=True, slots=True)
class Cooldowns:
    """How long a refused subscription rests when the provider does not say, and how long a
    run may wait for one to come back rather than fail."""

    rate_limit: float = 60.0
    quota: float = 7200.0
    wait_max: float = 30.0

    def of(self, kind: str, given: float | None) -> float | None:
        """Seconds the refused subscription cools; None: disabled until enabled."""
        if kind == "auth":
            return None
        if given is not None:
            return given
        return self.quota if kind == "quota" else self.rate_limit
