"""Run ids that say which session they belong to.

A run id is `<base64url(tenant/session_id)>.<random>`: any worker can find the session of a
run from its id alone, with no index key to write or read. The tenant in it is checked
against the caller's, so a run id never reaches across tenants.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from app.errors import InvalidKeyError, RunNotFoundError
from app.keys import checked_session_id, checked_tenant


def new_run_id(tenant: str, session_id: str) -> str:
    where = base64.urlsafe_b64encode(f"{tenant}/{session_id}".encode()).rstrip(b"=").decode()
    return f"{where}.{secrets.token_hex(8)}"


def locate_run(run_id: str) -> tuple[str, str]:
    """(tenant, session_id) of a run id; RunNotFoundError for anything malformed."""
    where, dot, suffix = run_id.partition(".")
    if not dot or len(suffix) != 16 or len(run_id) > 300:
        raise RunNotFoundError(run_id)
    try:
        decoded = base64.urlsafe_b64decode(where + "=" * (-len(where) % 4)).decode()
        tenant, slash, session_id = decoded.partition("/")
        if not slash:
            raise RunNotFoundError(run_id)
        return checked_tenant(tenant), checked_session_id(session_id)
    except (binascii.Error, UnicodeDecodeError, InvalidKeyError):
        raise RunNotFoundError(run_id) from None
