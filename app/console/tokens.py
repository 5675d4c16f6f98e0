"""Short-lived tokens that open the console's event stream.

A browser's EventSource sends no headers, so the stream cannot take the internal secret
as every other internal route does, and a secret in a URL would end up in access logs.
The console trades the secret (sent in a header) for a token that opens the stream only
within `lifetime` seconds: `<expiry ms>.<HMAC-SHA256 of it under a key derived from the
secret>`. Any worker checks it with the secret alone, no Redis; a token read from a log
is worthless a minute later, and it opens nothing but the read-only stream.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from app.errors import EndpointDisabledError, ForbiddenError, UnauthenticatedError

LIFETIME_SECONDS = 60.0


class ConsoleTokens:
    def __init__(self, secret: str | None, lifetime: float = LIFETIME_SECONDS) -> None:
        self._key = (
            hashlib.sha256(b"leasegate console stream\0" + secret.encode()).digest()
            if secret
            else None
        )
        self._lifetime = lifetime

    def issue(self) -> tuple[str, float]:
        """A new token, and how many seconds it opens the stream for."""
        expiry = str(round((time.time() + self._lifetime) * 1000))
        return f"{expiry}.{self._sign(expiry)}", self._lifetime

    def check(self, token: str | None) -> None:
        if self._key is None:
            raise EndpointDisabledError("internal endpoints are disabled")
        if not token:
            raise UnauthenticatedError("a console token (?token=) or the internal secret is needed")
        expiry, _, signature = token.partition(".")
        if not expiry.isdigit() or not hmac.compare_digest(self._sign(expiry), signature):
            raise ForbiddenError("the console token is not valid")
        if int(expiry) < time.time() * 1000:
            raise UnauthenticatedError("the console token has expired; ask for a new one")

    def _sign(self, expiry: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, expiry.encode(), hashlib.sha256).hexdigest()
