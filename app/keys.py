"""Every Redis key leasegate uses is built here.

All keys live under one namespace prefix and carry a Redis Cluster hash tag, the part in
braces, naming the guarded entity. Every key of one entity therefore lands in one slot,
so a script that touches several of them is valid on a cluster.

Ids that go into keys are checked here: a brace would move the hash tag and a colon
or newline could forge another entity's key, so only a safe alphabet is allowed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from app.errors import InvalidKeyError

NAMESPACE = "lg"

_SAFE = re.compile(r"[A-Za-z0-9._:\-]{1,200}")


def checked(part: str) -> str:
    if not _SAFE.fullmatch(part):
        raise InvalidKeyError(part, "allowed are 1-200 characters of A-Z a-z 0-9 . _ : -")
    return part


@dataclass(frozen=True, slots=True)
class LeaseKeys:
    """The keys of one fenced lease.

    `lease` holds the holder's token and expires; `fence` is a counter bumped on every
    grant and never expires, so fences rise for the life of the Redis data; `channel`
    is the pub/sub channel a release is announced on.
    """

    resource: str
    lease: str
    fence: str
    channel: str


def lease_keys(resource: str) -> LeaseKeys:
    tag = f"{NAMESPACE}:{{{checked(resource)}}}"
    return LeaseKeys(
        resource=resource,
        lease=f"{tag}:lease",
        fence=f"{tag}:fence",
        channel=f"{tag}:released",
    )


# Channels are not keys: Redis Cluster broadcasts them to every node.
CONTROL_CHANNEL = f"{NAMESPACE}:control"
"""Signals to whichever worker holds a session: cancel, interrupt, reset."""
WAKE_CHANNEL = f"{NAMESPACE}:wake"
"""Asks any worker to take over a session that was released with runs queued (payload:
tenant and session id as JSON)."""

ACTIVE_SESSIONS = f"{NAMESPACE}:sessions:active"
"""Sorted set of the sessions that may have work (member "tenant/session", score the last
admission in ms): the sweeper's index, so it never scans the keyspace."""

WORKERS = f"{NAMESPACE}:workers"
"""Sorted set of the workers that sent a heartbeat (member the worker id, score its last
heartbeat in ms): the registry's index; each worker's record is `worker_key(id)`."""


def worker_key(worker_id: str) -> str:
    """One worker's heartbeat record (JSON), expiring unless the worker renews it."""
    return f"{NAMESPACE}:{{w:{checked(worker_id)}}}:worker"


WEBHOOK_SESSIONS = f"{NAMESPACE}:webhooks:sessions"
"""Sorted set of the sessions that may owe completion webhooks (member "tenant/session",
score the last admission of a run with a webhook in ms): what the deliverer walks."""
WEBHOOKS_DEAD = f"{NAMESPACE}:webhooks:dead"
"""Sorted set of deliveries given up on (member "tenant/session/run_id", score when)."""

_TENANT = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_SESSION = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_REQUEST = re.compile(r"[A-Za-z0-9_\-]{8,64}")


def checked_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise InvalidKeyError(tenant, "a tenant is 1-64 characters of A-Z a-z 0-9 . _ -")
    return tenant


def checked_session_id(session_id: str) -> str:
    if not _SESSION.fullmatch(session_id):
        raise InvalidKeyError(session_id, "a session id is 1-128 characters of A-Z a-z 0-9 . _ : -")
    return session_id


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The keys of one session, all in one hash slot, so that every session script can
    declare every key it touches: `all` is the KEYS list every session script takes.

    - `lease`: the holder's token, with the lease TTL;
    - `state`: a small hash: generation, fence (bumped for every run a holder starts, so it
      rises for the life of the session's data), active run, holder, stop request;
    - `queue`: run ids waiting, in order;
    - `runs`: a hash of run records (`<run_id>`: what was asked, JSON made at admission;
      `<run_id>:s`: how it went, JSON kept by the scripts) and idempotency keys
      (`idem:<digest>`: run id);
    - `order`: run ids by admission time, for listing and for retention;
    - `transcript`: the current generation's turns;
    - `events`: the bounded event stream, and the pub/sub channel announcing its entries;
    - `outbox`: completion webhooks owed (`<run_id>`: JSON of the delivery), written in
      the same script as the run's terminal status; `outbox_due`: their ids by when each
      is due (ms), a claimed one pushed past its claim's end.
    """

    lease: LeaseKeys
    state: str
    queue: str
    runs: str
    order: str
    transcript: str
    events: str
    outbox: str
    outbox_due: str

    @property
    def all(self) -> list[str]:
        return [
            self.lease.lease,
            self.state,
            self.queue,
            self.runs,
            self.order,
            self.transcript,
            self.events,
            self.outbox,
            self.outbox_due,
        ]

    def reply(self, request_id: str) -> str:
        """Where a control script keeps its answer briefly, so that a re-sent call (same
        request id) is answered as the first one was."""
        if not _REQUEST.fullmatch(request_id):
            raise InvalidKeyError(request_id, "a request id is 8-64 characters of A-Z a-z 0-9 _ -")
        return f"{self.state}:reply:{request_id}"


def session_keys(tenant: str, session_id: str) -> SessionKeys:
    # The tenant has no colon, so "s:<tenant>:<session>" names exactly one pair.
    resource = f"s:{checked_tenant(tenant)}:{checked_session_id(session_id)}"
    lease = lease_keys(resource)
    prefix = f"{NAMESPACE}:{{{resource}}}:"
    return SessionKeys(
        lease=lease,
        state=f"{prefix}state",
        queue=f"{prefix}queue",
        runs=f"{prefix}runs",
        order=f"{prefix}order",
        transcript=f"{prefix}transcript",
        events=f"{prefix}events",
        outbox=f"{prefix}outbox",
        outbox_due=f"{prefix}outbox:due",
    )


@dataclass(frozen=True, slots=True)
class SlotKeys:
    """The keys of one capped resource's counting semaphore (`app/locks/slots.py`), all in
    one hash slot, so one script can declare every key it touches (`all`).

    - `holders`: sorted set of holders' tokens, score the hold's expiry (ms, Redis clock);
    - `info`: hash token -> JSON of the hold (run, tenant, worker, since, fence);
    - `waiters`: sorted set of waiting tokens, score the waiter's expiry (ms);
    - `queue`: hash token -> JSON of the waiter (run, tenant, priority, seq, worker, since);
    - `fence`: counter bumped on every grant, never expires;
    - `seq`: counter giving waiters their arrival order;
    - `released`: sorted set of recently released tokens (score: when, ms), so a re-sent
      release answers as the first did;
    - `wake`: prefix of the pub/sub channel a waiter is woken on (`wake + token`).
    """

    resource: str
    holders: str
    info: str
    waiters: str
    queue: str
    fence: str
    seq: str
    released: str
    wake: str

    @property
    def all(self) -> list[str]:
        return [
            self.holders,
            self.info,
            self.waiters,
            self.queue,
            self.fence,
            self.seq,
            self.released,
        ]


def slot_keys(resource: str) -> SlotKeys:
    """Keys of capped resource `resource`: `fleet`, `t:<tenant>`, `a:<agent>`, `sub:<id>`."""
    prefix = f"{NAMESPACE}:{{c:{checked(resource)}}}:"
    return SlotKeys(
        resource=resource,
        holders=f"{prefix}holders",
        info=f"{prefix}info",
        waiters=f"{prefix}waiters",
        queue=f"{prefix}queue",
        fence=f"{prefix}fence",
        seq=f"{prefix}seq",
        released=f"{prefix}released",
        wake=f"{prefix}wake:",
    )


CAPACITY_TENANTS = f"{NAMESPACE}:capacity:tenants"
"""Set of the tenants whose runs took a tenant slot, for GET /internal/capacity."""


def execution_key(execution_id: str) -> str:
    """A scheduled execution's record: which session and run it became, and its fingerprint."""
    return f"{NAMESPACE}:{{x:{checked(execution_id)}}}:execution"


def execution_idempotency_key(idempotency_key: str) -> str:
    """Which execution id an execute-task idempotency key was first used with (the key
    is any header value: its SHA-256 goes in the name)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return f"{NAMESPACE}:{{xk:{digest}}}:execution-id"


@dataclass(frozen=True, slots=True)
class AgentKeys:
    """The keys of one agent's subscription state, all in one hash slot with its switch lease.

    - `gate`: the reload gate, a fenced lease of its own (`app/subscriptions/reload.py`):
      closed while its key exists; its channel announces the gate opening, and `left`
      a run leaving `inflight` while the gate is closed;
    - `gate_state`: hash, what the gate is doing (from, to, phase, error, ...);
    - `inflight`: hash `<run id>/<fence>` -> `<subscription>|<expiry ms>` of the runs that
      passed the gate (`app/subscriptions/gate.py`), renewed by their worker;
    - `notices`: the agent's outbox of switch webhooks (`<event id>`: JSON of the
      delivery), `notices_due` their ids by when each is due (ms), `notices_cursor` the
      last event of `events` moved into the outbox (`app/webhooks/notices.py`).
    """

    lease: LeaseKeys
    assignment: str
    refusals: str
    events: str
    gate: LeaseKeys
    gate_state: str
    inflight: str
    left: str
    notices: str
    notices_due: str
    notices_cursor: str


def agent_keys(agent_id: str) -> AgentKeys:
    lease = lease_keys(f"a:{checked(agent_id)}")
    prefix = f"{NAMESPACE}:{{{lease.resource}}}:"
    return AgentKeys(
        lease=lease,
        assignment=f"{prefix}assignment",
        refusals=f"{prefix}refusals",
        events=f"{prefix}events",
        gate=LeaseKeys(
            resource=f"{lease.resource}:gate",
            lease=f"{prefix}gate",
            fence=f"{prefix}gate:fence",
            channel=f"{prefix}gate:opened",
        ),
        gate_state=f"{prefix}gate:state",
        inflight=f"{prefix}inflight",
        left=f"{prefix}gate:left",
        notices=f"{prefix}notices",
        notices_due=f"{prefix}notices:due",
        notices_cursor=f"{prefix}notices:cursor",
    )
