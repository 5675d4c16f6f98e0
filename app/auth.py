"""Who is calling: frontends by API key (a tenant each), the scheduler by a shared secret.

Presented credentials are compared by their SHA-256 digests with `hmac.compare_digest`, so
neither a key's content nor its length shows in the timing, and they never reach a log,
an error or a response.
"""

from __future__ import annotations

import hashlib
import hmac

from app.errors import EndpointDisabledError, ForbiddenError, UnauthenticatedError

OPEN_TENANT = "default"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is none."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class ApiKeys:
    def __init__(self, keys: dict[str, str]) -> None:
        self._tenants = {_digest(key): tenant for key, tenant in keys.items()}

    @property
    def open(self) -> bool:
        """No keys configured: one tenant, no authentication."""
        return not self._tenants

    def tenant(self, authorization: str | None) -> str:
        if self.open:
            return OPEN_TENANT
        token = bearer_token(authorization)
        if token is None:
            raise UnauthenticatedError("an API key is required: 'Authorization: Bearer <key>'")
        presented = _digest(token)
        found = None
        for digest, tenant in self._tenants.items():  # no early exit: same time for every key
            if hmac.compare_digest(digest, presented):
                found = tenant
        if found is None:
            raise ForbiddenError("the API key is not valid")
        return found


class InternalSecret:
    def __init__(self, secret: str | None) -> None:
        self._digest = _digest(secret) if secret else None

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, header_secret: str | None, authorization: str | None) -> None:
        if self._digest is None:
            raise EndpointDisabledError("internal endpoints are disabled")
        presented = header_secret if header_secret else bearer_token(authorization)
        if not presented:
            raise UnauthenticatedError("the internal secret is required (X-Internal-Secret)")
        if not hmac.compare_digest(_digest(presented), self._digest):
            raise ForbiddenError("the internal secret is not valid")
