"""Capacity across the fleet: which caps apply to a run, the start gate that takes their
slots before its agent starts, and what operators see of them."""

from app.capacity.caps import Caps, Need
from app.capacity.gate import CapacityGate

__all__ = ["CapacityGate", "Caps", "Need"]
