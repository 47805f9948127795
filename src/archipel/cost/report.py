"""The cost report: ledger entries summed by one key, split by kind, beside every budget's status.

``report()`` reads the ledger through ``ledger.entries`` and ``ledger.budget_status`` only; it prints nothing
and writes nothing. The CLI and (later) the API render its result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy.orm import Session

from archipel.cost.ledger import BudgetStatus, CostEntry, budget_status, entries
from archipel.errors import SpecError
from archipel.models.cost import BudgetSpec

__all__ = ["GROUPS", "NO_RUN", "UNTAGGED", "CostReport", "CostRow", "GroupBy", "percent_used", "report"]

GroupBy = Literal["site", "provider", "tag", "run", "kind", "day"]
GROUPS: tuple[str, ...] = get_args(GroupBy)

UNTAGGED = "(untagged)"
"""The group of entries that lack the tag a ``by="tag"`` report groups on."""
NO_RUN = "(no run)"
"""The group of entries no run caused (egress from replication, serving) in a ``by="run"`` report."""

_SPLIT_KINDS = ("compute", "egress")
"""Kinds with a column of their own; every other kind (serving, storage, ...) sums into ``other``."""


@dataclass(frozen=True)
class CostRow:
    """One group's spend in USD, split by kind; ``total_usd`` is the sum of the three columns."""

    key: str
    compute_usd: float
    egress_usd: float
    other_usd: float
    entries: int

    @property
    def total_usd(self) -> float:
        return self.compute_usd + self.egress_usd + self.other_usd

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "compute_usd": round(self.compute_usd, 6),
            "egress_usd": round(self.egress_usd, 6),
            "other_usd": round(self.other_usd, 6),
            "total_usd": round(self.total_usd, 6),
            "entries": self.entries,
        }


def percent_used(status: BudgetStatus) -> float:
    """Share of the budget spent in its current period, in percent (above 100 when exceeded)."""
    return 100.0 * status.spent_usd / status.limit_usd


@dataclass(frozen=True)
class CostReport:
    """Rows sorted by total USD descending (ties by key), their sum, and each budget in the current period.

    ``since`` limits the rows and ``total`` only: a budget always counts its own calendar period.
    """

    by: GroupBy
    tag_key: str | None
    since: datetime | None
    rows: tuple[CostRow, ...]
    total: CostRow
    budgets: tuple[BudgetStatus, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "tag_key": self.tag_key,
            "since": self.since.isoformat() if self.since else None,
            "rows": [r.as_json() for r in self.rows],
            "total": {k: v for k, v in self.total.as_json().items() if k != "key"},
            "budgets": [{**b.as_json(), "percent_used": round(percent_used(b), 2)} for b in self.budgets],
        }


def _key_of(by: GroupBy, tag_key: str | None) -> Callable[[CostEntry], str]:
    if by == "tag":
        assert tag_key is not None
        return lambda e: e.tags.get(tag_key, UNTAGGED)
    if by == "run":
        return lambda e: e.run_id or NO_RUN
    if by == "day":
        return lambda e: e.at.date().isoformat()  # the ledger returns aware UTC datetimes: UTC days
    return lambda e: getattr(e, by)  # site, provider or kind


def _sum(key: str, group: list[CostEntry]) -> CostRow:
    by_kind = {kind: sum(e.amount_usd for e in group if e.kind == kind) for kind in _SPLIT_KINDS}
    other = sum(e.amount_usd for e in group if e.kind not in _SPLIT_KINDS)
    return CostRow(key, by_kind["compute"], by_kind["egress"], other, len(group))


def report(
    session: Session,
    *,
    by: GroupBy,
    since: datetime | None = None,
    tag_key: str | None = None,
    budgets: Mapping[str, BudgetSpec] | None = None,
    now: datetime | None = None,
) -> CostReport:
    """Ledger entries at or after ``since`` (all when None) grouped by ``by``, and ``budgets`` as of ``now``.

    ``by="tag"`` groups on the value of the tag ``tag_key`` (required); entries without it form
    ``UNTAGGED``. ``by="day"`` groups on the UTC date. Raises ``SpecError`` for an unknown ``by`` or a
    missing ``tag_key``.
    """
    if by not in GROUPS:
        raise SpecError(f"cannot group costs by {by!r}; use one of {', '.join(GROUPS)}")
    if by == "tag" and not tag_key:
        raise SpecError("grouping costs by tag needs the tag's key (e.g. team)")
    key_of = _key_of(by, tag_key)
    lines = entries(session, since=since)
    groups: dict[str, list[CostEntry]] = {}
    for entry in lines:
        groups.setdefault(key_of(entry), []).append(entry)
    rows = sorted((_sum(k, g) for k, g in groups.items()), key=lambda r: (-r.total_usd, r.key))
    return CostReport(
        by=by,
        tag_key=tag_key if by == "tag" else None,
        since=since,
        rows=tuple(rows),
        total=_sum("total", lines),
        budgets=tuple(budget_status(session, budgets or {}, now=now)),
    )
