"""Fenced Redis leases: acquire, renew, release, heartbeat, blocking wait."""

from app.locks.heartbeat import Heartbeat
from app.locks.lease import Lease, LeaseManager
from app.locks.scripts import LeaseScripts

__all__ = ["Heartbeat", "Lease", "LeaseManager", "LeaseScripts"]
