"""The one exception hierarchy of leasegate.

    LeasegateError
    ├── RedisUnavailableError      Redis could not be reached; nothing was changed
    │   └── AdmissionUnknownError  Redis did not answer an admission in time
    ├── ServiceClosingError        this worker is shutting down and admits nothing more
    ├── InvalidKeyError            an id that cannot be turned into a Redis key
    ├── MetadataTooLargeError      a message's metadata is over its size limit
    ├── WebhookNotAllowedError     a message named a webhook URL this service may not call
    ├── UnknownAgentError          a request named an agent that is not configured
    ├── AgentInputError            an AG-UI RunAgentInput leasegate cannot run (no user text...)
    ├── AgentFailedError           an agent could not produce its reply
    │   ├── SubscriptionFailureError  the upstream refused a subscription (.kind, .cooldown)
    │   └── SubscriptionsExhaustedError  no subscription of the agent is usable (.retry_in)
    ├── AgentsConfigError          the agents file is not valid
    ├── ConfigurationError         the settings or the agents file are not valid (start-up)
    ├── UnknownSubscriptionError   a subscription id the agent does not have
    ├── SessionError               (carries .session_id)
    │   ├── SessionBusyError       busy_policy=reject on a busy session (.active_run_id)
    │   └── QueueFullError         the session's queue is at its cap
    ├── RunNotFoundError           no such run (or not the caller's)
    ├── RunTerminalError           the run already reached a terminal status (.run_status)
    ├── IdempotencyConflictError   an idempotency key reused with a different request
    ├── SessionNotFoundError       no such session for this tenant
    ├── ExecutionNotFoundError     no such scheduled execution
    ├── NoticeNotFoundError        no such switch notice owed by the agent
    ├── EndpointDisabledError      a feature that is not configured (e.g. /internal without secret)
    └── AuthError
        ├── UnauthenticatedError   no usable credentials (missing, wrong scheme)
        └── ForbiddenError         credentials presented but not valid here
    └── LeaseError                 (carries .key)
        ├── LeaseNotOwnedError     renew/release by a caller whose token is not the holder's
        ├── LeaseLostError         the lease was lost while held (carries .fence, .reason)
        └── LeaseTimeoutError      a blocking acquire gave up

Domain code raises these and never an HTTP exception; `app.problems` maps them to
RFC 9457 responses in one place.
"""

from __future__ import annotations

import math


class LeasegateError(Exception):
    """Root of every error leasegate raises on purpose."""


class RedisUnavailableError(LeasegateError):
    def __init__(self, detail: str = "Redis could not be reached") -> None:
        super().__init__(detail)
        self.detail = detail


class AdmissionUnknownError(RedisUnavailableError):
    """Redis did not answer an admission in time: it may or may not have been admitted."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            "Redis did not answer in time, so whether the message was admitted is unknown "
            f"(it would be run {run_id}); retrying with the same Idempotency-Key is safe: "
            "it finds that run if there is one, and admits the message once otherwise"
        )
        self.run_id = run_id


class ServiceClosingError(LeasegateError):
    """This worker is shutting down; the caller should retry (another worker admits)."""


class WebhookNotAllowedError(LeasegateError):
    """A message named a webhook URL this service may not call (never echoes the URL)."""


class MetadataTooLargeError(LeasegateError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"metadata is {size} bytes serialized; at most {limit}")
        self.size = size
        self.limit = limit


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


class UnknownAgentError(LeasegateError):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"no agent {agent_id!r} is configured")
        self.agent_id = agent_id


class AgentInputError(LeasegateError):
    """An AG-UI `RunAgentInput` that is valid AG-UI but not a message leasegate can run."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AgentFailedError(LeasegateError):
    """An agent's reply failed; the message is recorded as the run's error."""


class SubscriptionFailureError(AgentFailedError):
    """The upstream refused the subscription: `kind` is "rate_limit" (transient), "quota"
    (a wall until the provider's window resets) or "auth" (a bad key). `cooldown` is how
    long it must rest: seconds the provider gave, or None, which for "auth" means disabled
    until an operator enables it, and for the other kinds the configured default for the
    kind (LEASEGATE_COOLDOWN_RATE_LIMIT_SECONDS, LEASEGATE_COOLDOWN_QUOTA_SECONDS)."""

    def __init__(
        self,
        kind: str,
        subscription_id: str | None,
        detail: str = "",
        cooldown: float | None = None,
    ) -> None:
        super().__init__(
            f"subscription {subscription_id!r} refused ({kind}){': ' + detail if detail else ''}"
        )
        self.kind = kind
        self.subscription_id = subscription_id
        self.cooldown = None if kind == "auth" else cooldown


class SubscriptionsExhaustedError(AgentFailedError):
    """subscriptions_exhausted: every subscription of the agent is cooling or disabled.
    `retry_in` is the seconds until the first one comes back; None if all are disabled."""

    code = "subscriptions_exhausted"

    def __init__(self, agent_id: str, retry_in: float | None, last: str) -> None:
        back = (
            "all are disabled until an operator enables one"
            if retry_in is None
            else f"the first comes back in {math.ceil(retry_in)} s"
        )
        super().__init__(
            f"{self.code}: no viable subscription for agent {agent_id!r}; {back} "
            f"(last refusal: {last})"
        )
        self.agent_id = agent_id
        self.retry_in = retry_in


class ReloadFailedError(LeasegateError):
    """An agent's reload hook did not take the new subscription (its `reload_url` refused
    or could not be reached, or its `reload` method raised); the message never holds a key."""

    def __init__(self, agent_id: str, subscription_id: str, detail: str) -> None:
        super().__init__(
            f"agent {agent_id!r} did not reload subscription {subscription_id!r}: {detail}"
        )
        self.agent_id = agent_id
        self.subscription_id = subscription_id


class RunExpiredError(LeasegateError):
    """A run that had not started by its start deadline (`start_within_seconds`)."""


class CapacitySlotLostError(AgentFailedError):
    """A running run lost one of its capacity slots (it expired: Redis unreachable for
    longer than the slot TTL, or the worker stalled); the run is stopped and fails."""

    def __init__(self, resource: str, detail: str) -> None:
        super().__init__(f"capacity slot of {resource} lost while the run ran: {detail}")
        self.resource = resource


class AgentsConfigError(LeasegateError):
    """The agents file is not valid; the message says where."""


class ConfigurationError(LeasegateError):
    """The service cannot start: settings or agents file not valid. The message says what,
    in one line, and never contains a configured secret."""


class UnknownSubscriptionError(LeasegateError):
    def __init__(self, agent_id: str, subscription_id: str) -> None:
        super().__init__(f"agent {agent_id!r} has no subscription {subscription_id!r}")
        self.agent_id = agent_id
        self.subscription_id = subscription_id


class SessionError(LeasegateError):
    def __init__(self, session_id: str, message: str) -> None:
        super().__init__(message)
        self.session_id = session_id


class SessionBusyError(SessionError):
    def __init__(self, session_id: str, active_run_id: str | None) -> None:
        super().__init__(session_id, f"session {session_id!r} is running another run")
        self.active_run_id = active_run_id


class QueueFullError(SessionError):
    def __init__(self, session_id: str, cap: int) -> None:
        super().__init__(session_id, f"session {session_id!r} already has {cap} queued runs")
        self.cap = cap


class RunNotFoundError(LeasegateError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r}")
        self.run_id = run_id


class RunTerminalError(LeasegateError):
    def __init__(self, run_id: str, run_status: str) -> None:
        super().__init__(f"run {run_id!r} already ended {run_status}")
        self.run_id = run_id
        self.run_status = run_status


class IdempotencyConflictError(LeasegateError):
    """An idempotency key was reused for a different request."""


class SessionNotFoundError(LeasegateError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r}")
        self.session_id = session_id


class ExecutionNotFoundError(LeasegateError):
    def __init__(self, execution_id: str) -> None:
        super().__init__(f"no execution {execution_id!r}")
        self.execution_id = execution_id


class NoticeNotFoundError(LeasegateError):
    def __init__(self, agent_id: str, notice_id: str) -> None:
        super().__init__(f"agent {agent_id!r} owes no switch notice {notice_id!r}")
        self.agent_id = agent_id
        self.notice_id = notice_id


class EndpointDisabledError(LeasegateError):
    """The endpoint exists only when configured; it answers as if it did not exist."""


class AuthError(LeasegateError):
    """Authentication failed; the message never contains what was presented."""


class UnauthenticatedError(AuthError):
    pass


class ForbiddenError(AuthError):
    pass
