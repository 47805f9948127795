"""The job SDK for user code: ``archipel.job.context()`` (see :mod:`archipel.executor.context`)."""

from __future__ import annotations

from archipel.executor.context import Checkpoints, JobContext, context

__all__ = ["Checkpoints", "JobContext", "context"]
