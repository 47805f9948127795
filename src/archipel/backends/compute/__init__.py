"""Compute backends: run jobs at a site. The interface is in :mod:`.base`, URIs and plugins in :mod:`.registry`.

Importing this package loads only the standard library and :mod:`archipel.errors`; backends are imported when
:func:`open_compute` or :func:`backend_class` first needs them.
"""

from __future__ import annotations

from archipel.backends.compute.base import (
    JOB_ID,
    ComputeBackend,
    JobState,
    JobStatus,
    LaunchRequest,
    Resources,
    WithCapacity,
    WithForget,
    WithLogTail,
)
from archipel.backends.compute.registry import backend_class, open_compute, parse_compute_uri

__all__ = [
    "JOB_ID",
    "ComputeBackend",
    "JobState",
    "JobStatus",
    "LaunchRequest",
    "Resources",
    "WithCapacity",
    "WithForget",
    "WithLogTail",
    "backend_class",
    "open_compute",
    "parse_compute_uri",
]
