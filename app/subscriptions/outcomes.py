"""What a subscription switch answers (`SwitchResult`), and the event a switch made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Reason = Literal["switched", "stale", "no_alternative", "assigned"]


@dataclass(frozen=True, slots=True)
class SwitchResult:
    switched: bool
    from_subscription: str
    to_subscription: str
    reason: Reason
    retry_in: float | None = None
    """With no alternative: seconds until the first subscription comes back (None: all
    are disabled)."""

    def public(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "switched": self.switched,
            "from": self.from_subscription,
            "to": self.to_subscription,
            "reason": self.reason,
        }
        if self.reason == "no_alternative":
            answer["retry_in"] = self.retry_in
        return answer


def switch_event(agent_id: str, old: str, new: str, reason: str, kind: str) -> dict[str, Any]:
    """The event of a switch from `old` to `new`, as the switch webhook is told of it."""
    return {
        "type": "subscription_switched",
        "agent_id": agent_id,
        "from": old,
        "to": new,
        "reason": reason,
        "kind": kind,
    }
