"""The one exception hierarchy of leasegate.

    LeasegateError
    ├── RedisUnavailableError      Redis could not be reached; nothing was changed
    ├── InvalidKeyError            an id that cannot be turned into a Redis key
    └── LeaseError                 (carries .key)
        ├── LeaseNotOwnedError     renew/release by a caller whose token is not the holder's
        ├── LeaseLostError         the lease was lost while held (carries .fence, .reason)
        └── LeaseTimeoutError      a blocking acquire gave up

Domain code raises these and never an HTTP exception; `app.problems` maps them to
RFC 9457 responses in one place.
"""

from __future__ import annotations


class LeasegateError(Exception):
    """Root of every error leasegate raises on purpose."""


class RedisUnavailableError(LeasegateError):
    def __init__(self, detail: str = "Redis could not be reached") -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidKeyError(LeasegateError, ValueError):
    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{value!r} cannot be used in a key: {reason}")
        self.value = value
        self.reason = reason


class LeaseError(LeasegateError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class LeaseNotOwnedError(LeaseError):
    def __init__(self, key: str) -> None:
        super().__init__(key, f"lease {key!r} is not held by this token")


class LeaseLostError(LeaseError):
    def __init__(self, key: str, fence: int, reason: str) -> None:
        super().__init__(key, f"lease {key!r} (fence {fence}) was lost: {reason}")
        self.fence = fence
        self.reason = reason


class LeaseTimeoutError(LeaseError):
    def __init__(self, key: str, timeout: float) -> None:
        super().__init__(key, f"lease {key!r} not acquired within {timeout:g}s")
        self.timeout = timeout
