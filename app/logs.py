"""Logging set-up for the service process."""

from __future__ import annotations

import logging


def configure(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_leasegate", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s")
        )
        handler._leasegate = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
