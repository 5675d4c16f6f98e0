"""A session as the code passes it around: tenant, id and its keys."""

from __future__ import annotations

from dataclasses import dataclass

from app.keys import SessionKeys, session_keys


@dataclass(frozen=True, slots=True)
class SessionRef:
    tenant: str
    session_id: str
    keys: SessionKeys

    @classmethod
    def of(cls, tenant: str, session_id: str) -> SessionRef:
        return cls(tenant, session_id, session_keys(tenant, session_id))

    @property
    def member(self) -> str:
        """The session's entry in the index of sessions with work."""
        return f"{self.tenant}/{self.session_id}"
