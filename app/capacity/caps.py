"""Which capped resources a run needs a slot of, in the one order every run takes them.

Order: tenant, agent, fleet, then the subscription (chosen only as the agent is called,
and taken again after a switch). Every run takes its slots in this order and releases
them all at its end, so no two runs can each hold a slot the other waits for. The order
also keeps waiting cheap for others: a run holds only its own tenant's slot while it
waits for its agent, and a fleet slot only once its agent has room for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.agents.config import AgentsConfig
from app.settings import Settings

WAITING_FOR = {
    "tenant": "tenant_capacity",
    "agent": "agent_capacity",
    "fleet": "fleet_capacity",
    "subscription": "subscription_capacity",
}


@dataclass(frozen=True, slots=True)
class Need:
    """A slot a run must hold: of `resource` (a key of `app.keys.slot_keys`), `cap` at once."""

    kind: str
    name: str
    cap: int

    @property
    def resource(self) -> str:
        prefix = {"tenant": "t:", "agent": "a:", "subscription": "sub:", "fleet": ""}[self.kind]
        return f"{prefix}{self.name}"

    @property
    def waiting_for(self) -> str:
        return WAITING_FOR[self.kind]


class Caps:
    def __init__(
        self,
        *,
        fleet: int | None = None,
        tenant_default: int | None = None,
        tenants: Mapping[str, int] | None = None,
        agents: Mapping[str, int] | None = None,
        subscriptions: Mapping[str, int] | None = None,
    ) -> None:
        self.fleet = fleet
        self.tenant_default = tenant_default
        self.tenants = dict(tenants or {})
        self.agents = dict(agents or {})
        self.subscriptions = dict(subscriptions or {})

    @classmethod
    def from_config(cls, settings: Settings, config: AgentsConfig) -> Caps:
        return cls(
            fleet=settings.max_concurrent_runs,
            tenant_default=settings.tenant_max_concurrent_runs,
            tenants=settings.tenant_limits,
            agents={
                a.id: a.max_concurrent_runs for a in config.agents.values() if a.max_concurrent_runs
            },
            subscriptions=config.subscription_caps,
        )

    @property
    def any(self) -> bool:
        return bool(
            self.fleet or self.tenant_default or self.tenants or self.agents or self.subscriptions
        )

    def tenant_cap(self, tenant: str) -> int | None:
        return self.tenants.get(tenant, self.tenant_default)

    def for_run(self, tenant: str, agent_id: str) -> list[Need]:
        """The slots a run takes before its agent starts, in the order it takes them."""
        needs = []
        if (cap := self.tenant_cap(tenant)) is not None:
            needs.append(Need("tenant", tenant, cap))
        if (cap := self.agents.get(agent_id)) is not None:
            needs.append(Need("agent", agent_id, cap))
        if self.fleet is not None:
            needs.append(Need("fleet", "fleet", self.fleet))
        return needs

    def for_subscription(self, subscription_id: str | None) -> Need | None:
        cap = self.subscriptions.get(subscription_id or "")
        return Need("subscription", subscription_id or "", cap) if cap else None

    def configured(self, tenants: list[str]) -> list[Need]:
        """Every capped resource, for operators: the fleet, the tenants named in
        LEASEGATE_TENANT_LIMITS or in `tenants` (those seen with a default cap), agents,
        subscriptions."""
        needs = [Need("fleet", "fleet", self.fleet)] if self.fleet else []
        for tenant in sorted(set(self.tenants) | set(tenants)):
            if (cap := self.tenant_cap(tenant)) is not None:
                needs.append(Need("tenant", tenant, cap))
        needs += [Need("agent", a, cap) for a, cap in sorted(self.agents.items())]
        needs += [Need("subscription", s, cap) for s, cap in sorted(self.subscriptions.items())]
        return needs
