"""The life cycle of runs and of their steps (the same states for both).

``PENDING`` → ``PLACED`` (a site is chosen, inputs are being materialised) → ``RUNNING`` → ``SUCCEEDED`` /
``FAILED`` / ``CANCELLED``; a running step whose worker or site died goes ``RECOVERING`` and back to ``PLACED``
at the same site if it is healthy, else at another site the policies allow. A step whose inputs were reused
from an earlier run with the same cache key is ``SUCCEEDED`` with ``cached_from`` set.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ACTIVE", "TERMINAL", "RunState"]


class RunState(StrEnum):
    PENDING = "PENDING"
    PLACED = "PLACED"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
ACTIVE = frozenset(set(RunState) - TERMINAL)
