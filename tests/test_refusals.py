"""The refusal classifier, case by case, on answers upstreams really give (status, headers,
body), and the cooldowns read from their headers."""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

import pytest

from app.agents.upstream import error_text
from app.subscriptions.classify import Cooldowns, Refusal, classify, cooldown_from

OPENAI_RATE_LIMIT = {
    "error": {
        "message": "Rate limit reached for gpt-4o in organization org-x on tokens per min "
        "(TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 2.5s.",
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
OPENAI_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
OPENAI_BAD_KEY = {
    "error": {
        "message": "Incorrect API key provided: sk-abc***xyz.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
ANTHROPIC_RATE_LIMIT = {
    "type": "error",
    "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate"},
}
ANTHROPIC_CREDIT = {
    "type": "error",
    "error": {
        "type": "invalid_request_error",
        "message": "Your credit balance is too low to access the Anthropic API.",
    },
}
ANTHROPIC_BAD_KEY = {
    "type": "error",
    "error": {"type": "authentication_error", "message": "invalid x-api-key"},
}
ANTHROPIC_FORBIDDEN = {
    "type": "error",
    "error": {"type": "permission_error", "message": "Your API key does not have permission"},
}
GEMINI_QUOTA = {
    "error": {
        "code": 429,
        "message": "Quota exceeded for quota metric 'Generate Content API requests per day'",
        "status": "RESOURCE_EXHAUSTED",
    }
}
PROXY_USAGE_LIMIT = {"error": {"message": "Monthly usage limit reached for this key"}}
MODEL_MISSING = {
    "error": {"message": "The model `gpt-9` does not exist", "code": "model_not_found"}
}
REGION = {"error": {"message": "Country, region, or territory not supported"}}

CASES: list[tuple[str, int | None, dict[str, str], Any, Refusal | None]] = [
    (
        "openai 429 with reset headers",
        429,
        {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "2.5s"},
        OPENAI_RATE_LIMIT,
        Refusal("rate_limit", 2.5),
    ),
    ("openai 429 bare", 429, {}, OPENAI_RATE_LIMIT, Refusal("rate_limit", None)),
    ("openai insufficient_quota", 429, {}, OPENAI_QUOTA, Refusal("quota", None)),
    ("openai bad key", 401, {}, OPENAI_BAD_KEY, Refusal("auth", None)),
    (
        "anthropic 429 retry-after",
        429,
        {"retry-after": "20", "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:00Z"},
        ANTHROPIC_RATE_LIMIT,
        Refusal("rate_limit", 20),
    ),
    ("anthropic credit balance", 400, {}, ANTHROPIC_CREDIT, Refusal("quota", None)),
    ("anthropic bad key", 401, {}, ANTHROPIC_BAD_KEY, Refusal("auth", None)),
    ("anthropic 403 without a key marker", 403, {}, ANTHROPIC_FORBIDDEN, None),
    ("403 with a key marker", 403, {}, OPENAI_BAD_KEY, Refusal("auth", None)),
    ("gemini quota exceeded", 429, {}, GEMINI_QUOTA, Refusal("quota", None)),
    ("402 payment required", 402, {}, "Payment Required", Refusal("quota", None)),
    ("a proxy's usage limit", 400, {}, PROXY_USAGE_LIMIT, Refusal("quota", None)),
    (
        "quota with a reset header",
        429,
        {"retry-after": "3600"},
        OPENAI_QUOTA,
        Refusal("quota", 3600),
    ),
    ("429 as plain text", 429, {"Retry-After": "7"}, "Too Many Requests", Refusal("rate_limit", 7)),
    ("an error event in the stream", None, {}, ANTHROPIC_RATE_LIMIT, Refusal("rate_limit", None)),
    ("an unknown model", 404, {}, MODEL_MISSING, None),
    ("a region refusal", 403, {}, REGION, None),
    ("a 500", 500, {}, OPENAI_RATE_LIMIT, None),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_recorded_answers_are_classified(
    status: int | None, headers: dict[str, str], body: Any, expected: Refusal | None
) -> None:
    _, hints = error_text(body)
    assert classify(status, hints, headers) == expected


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "20"}, 20),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"x-ratelimit-reset-requests": "1m30s"}, 90),
        ({"x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-reset-requests": "20ms"}, 360),
        ({"x-ratelimit-reset-requests": "2h"}, 7200),
        ({"retry-after": "soon"}, None),
        ({"x-ratelimit-reset-requests": "-3"}, None),
        ({}, None),
    ],
)
def test_cooldowns_are_read_from_seconds_and_durations(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert cooldown_from(headers) == seconds


def test_cooldowns_are_read_from_dates_and_unix_times() -> None:
    in_a_minute = time.time() + 60
    for headers in (
        {"retry-after": formatdate(in_a_minute, usegmt=True)},
        {"x-ratelimit-reset": str(int(in_a_minute))},
        {
            "anthropic-ratelimit-tokens-reset": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(in_a_minute)
            )
        },
    ):
        seconds = cooldown_from(headers)
        assert seconds is not None and 55 < seconds <= 61, headers
    assert cooldown_from({"retry-after": "Mon, 01 Jan 2001 00:00:00 GMT"}) == 0


def test_defaults_fill_in_what_the_provider_did_not_say() -> None:
    cooldowns = Cooldowns(rate_limit=60, quota=7200, wait_max=30)
    assert cooldowns.of("rate_limit", None) == 60
    assert cooldowns.of("rate_limit", 2) == 2
    assert cooldowns.of("quota", None) == 7200
    assert cooldowns.of("quota", 600) == 600
    assert cooldowns.of("auth", 5) is None  # disabled until enabled, whatever was said
