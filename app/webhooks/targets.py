"""Which URL a run's completion webhook goes to, and which a message may name."""

from __future__ import annotations

from urllib.parse import urlsplit

from app.errors import WebhookNotAllowedError
from app.settings import Settings, is_http_url


def webhook_for(settings: Settings, asked: str | None) -> str | None:
    """The URL a run's completion webhook goes to: the message's own (an absolute http(s)
    URL whose host LEASEGATE_WEBHOOK_ALLOWED_HOSTS lists), else LEASEGATE_RUN_WEBHOOK_URL."""
    if asked is None:
        configured = settings.run_webhook_url
        return configured.get_secret_value() if configured else None
    if settings.webhook_secret is None:
        raise WebhookNotAllowedError("completion webhooks are not configured on this service")
    if not is_http_url(asked):
        raise WebhookNotAllowedError("a webhook is an absolute http:// or https:// URL")
    host = (urlsplit(asked).hostname or "").lower()
    if host not in {h.lower() for h in settings.webhook_allowed_hosts}:
        raise WebhookNotAllowedError("the webhook's host is not in LEASEGATE_WEBHOOK_ALLOWED_HOSTS")
    return asked
