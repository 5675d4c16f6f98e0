"""Settings as the tests build them: a Redis URL and whatever the test changes."""

from __future__ import annotations

from app.settings import Settings


def make_settings(url: str, **overrides: object) -> Settings:
    return Settings(redis_url=url, **overrides)  # type: ignore[arg-type]
