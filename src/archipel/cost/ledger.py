"""The cost ledger: one table of what was spent, where and why; budgets are queries over it.

Every entry has a kind (``egress`` now; ``compute``, ``serving`` and ``storage`` as capabilities add them), the
site that pays, an amount in USD with its quantity, unit and unit price, tags (team, project, pipeline) and the id
of the run, transfer or deployment that caused it. Amounts are computed by the caller from the price catalog;
the ledger never guesses a price.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from archipel.db.orm import CostEntryRow
from archipel.db.types import utcnow
from archipel.models.cost import BudgetSpec
from archipel.workspace import Workspace

__all__ = [
    "GB",
    "BudgetStatus",
    "CostEntry",
    "add_entry",
    "budget_status",
    "egress_rate",
    "entries",
    "period_start",
    "spent",
]

GB = 10**9
"""Egress is priced per decimal gigabyte, as the clouds bill it."""


@dataclass(frozen=True)
class CostEntry:
    id: int
    at: datetime
    kind: str
    site: str
    dest_site: str | None
    provider: str
    amount_usd: float
    quantity: float
    unit: str
    unit_price_usd: float
    tags: dict[str, str]
    run_id: str | None
    transfer_id: str | None
    deployment_id: str | None
    description: str

    @classmethod
    def of(cls, row: CostEntryRow) -> CostEntry:
        return cls(
            row.id, row.at, row.kind, row.site, row.dest_site, row.provider, row.amount_usd, row.quantity,
            row.unit, row.unit_price_usd, dict(row.tags), row.run_id, row.transfer_id, row.deployment_id,
            row.description,
        )  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "at": self.at.isoformat()}


def egress_rate(workspace: Workspace, src_site: str, dst_site: str) -> float:
    """USD per GB sent from ``src_site`` to ``dst_site``: the sender's override, else the price catalog."""
    src, dst = workspace.site(src_site), workspace.site(dst_site)
    if src.pricing is not None and src.pricing.egress_per_gb is not None:
        return src.pricing.egress_per_gb
    return workspace.catalog.egress_price_per_gb((src.provider, src.region), (dst.provider, dst.region))


def add_entry(
    session: Session,
    *,
    kind: str,
    site: str,
    provider: str,
    quantity: float,
    unit: str,
    unit_price_usd: float,
    dest_site: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    transfer_id: str | None = None,
    deployment_id: str | None = None,
    description: str = "",
    at: datetime | None = None,
) -> CostEntryRow:
    """Add one line inside the caller's transaction; ``amount_usd = quantity * unit_price_usd``."""
    if quantity < 0 or unit_price_usd < 0:
        raise ValueError("cost ledger quantities and prices are never negative")
    row = CostEntryRow(
        at=at or utcnow(),
        kind=kind,
        site=site,
        dest_site=dest_site,
        provider=provider,
        amount_usd=quantity * unit_price_usd,
        quantity=quantity,
        unit=unit,
        unit_price_usd=unit_price_usd,
        tags=dict(tags or {}),
        run_id=run_id,
        transfer_id=transfer_id,
        deployment_id=deployment_id,
        description=description,
    )
    session.add(row)
    return row


def period_start(period: str, now: datetime | None = None) -> datetime | None:
    """Start (UTC) of the calendar period containing ``now``: day, week (Monday), month; None for total."""
    now = (now or utcnow()).astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return midnight
    if period == "week":
        return midnight - timedelta(days=midnight.weekday())
    if period == "month":
        return midnight.replace(day=1)
    if period == "total":
        return None
    raise ValueError(f"unknown period {period!r}; use day, week, month or total")


def entries(
    session: Session,
    *,
    since: datetime | None = None,
    kind: str | None = None,
    tags: Mapping[str, str] | None = None,
    sites: Sequence[str] | None = None,
) -> list[CostEntry]:
    """Ledger lines, oldest first, filtered by time, kind, site and tags (all given tags must match)."""
    query = select(CostEntryRow).order_by(CostEntryRow.at, CostEntryRow.id)
    if since is not None:
        query = query.where(CostEntryRow.at >= since)
    if kind is not None:
        query = query.where(CostEntryRow.kind == kind)
    if sites is not None:
        query = query.where(CostEntryRow.site.in_(list(sites)))
    rows = [CostEntry.of(row) for row in session.scalars(query)]
    wanted = dict(tags or {})
    return [e for e in rows if all(e.tags.get(k) == v for k, v in wanted.items())]


def spent(
    session: Session,
    tags: Mapping[str, str] | None = None,
    period: str = "month",
    *,
    sites: Sequence[str] | None = None,
    now: datetime | None = None,
) -> float:
    """USD spent in the current ``period`` by the entries carrying ``tags`` (at ``sites``, when given)."""
    return sum(
        e.amount_usd for e in entries(session, since=period_start(period, now), tags=tags, sites=sites)
    )


@dataclass(frozen=True)
class BudgetStatus:
    name: str
    limit_usd: float
    period: str
    spent_usd: float

    @property
    def remaining_usd(self) -> float:
        return self.limit_usd - self.spent_usd

    @property
    def exceeded(self) -> bool:
        return self.spent_usd > self.limit_usd

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "limit_usd": self.limit_usd,
            "period": self.period,
            "spent_usd": round(self.spent_usd, 6),
            "remaining_usd": round(self.remaining_usd, 6),
            "exceeded": self.exceeded,
        }


def budget_status(
    session: Session, budgets: Mapping[str, BudgetSpec], *, now: datetime | None = None
) -> list[BudgetStatus]:
    """Each budget with what its entries spent in its current period."""
    return [
        BudgetStatus(name, b.amount_usd, b.period, spent(session, b.tags, b.period, sites=b.sites, now=now))
        for name, b in budgets.items()
    ]
