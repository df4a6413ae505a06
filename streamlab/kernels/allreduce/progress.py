"""Collective calls, bracketed for a rank's liveness monitor: a rank that stalls inside one is
most likely waiting for a peer (streamlab.collective.watch.RankMonitor). Stdlib only."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Protocol

__all__ = ["Monitor", "in_collective", "install"]


class Monitor(Protocol):
    def collective(self, name: str) -> AbstractContextManager: ...


_ACTIVE: Monitor | None = None


def install(monitor: Monitor | None) -> None:
    """The rank's monitor, or None."""
    global _ACTIVE
    _ACTIVE = monitor


def in_collective(name: str) -> AbstractContextManager:
    """Bracket a collective call: the rank's monitor then knows a stall there is most likely a
    wait for a peer. A no-op outside a multi-process run."""
    return _ACTIVE.collective(name) if _ACTIVE is not None else contextlib.nullcontext()
