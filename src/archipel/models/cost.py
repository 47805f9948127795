"""Budgets, as users write them under ``budgets:`` in ``archipel.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archipel.models.common import StrictModel

__all__ = ["BudgetSpec", "Period"]

Period = Literal["day", "week", "month", "total"]


class BudgetSpec(StrictModel):
    """A spending limit over a calendar period (UTC) for the ledger entries whose tags match."""

    amount_usd: float = Field(gt=0)
    """The limit in USD per period."""
    period: Period = "month"
    """day, week (from Monday), month, or total (all time)."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Only entries carrying all these tags count (e.g. {team: research}); empty counts everything."""
    sites: list[str] | None = None
    """Only entries at these sites count; None counts every site."""
    enforcement: Literal["hard", "soft"] = "hard"
    """hard: a plan or a launch that would exceed it is refused; soft: it goes ahead with a warning (audited)."""
