"""Every Redis key leasegate uses is built here.

All keys live under one namespace prefix and carry a Redis Cluster hash tag, the part in
braces, naming the guarded entity. Every key of one entity therefore lands in one slot,
so a script that touches several of them is valid on a cluster.

Ids that go into keys are checked here: a brace would move the hash tag and a colon
or newline could forge another entity's key, so only a safe alphabet is allowed.
"""

from __future__ import annotations

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
