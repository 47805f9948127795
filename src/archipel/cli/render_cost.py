"""Rendering for ``archipel cost``: the spend table, then the budgets (Rich lives in the CLI only)."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from archipel.cli.render import _money, console
from archipel.cost.report import percent_used

if TYPE_CHECKING:
    from archipel.cost.ledger import BudgetStatus
    from archipel.cost.report import CostReport

__all__ = ["report"]

_MONEY_COLUMNS = ("compute", "egress", "other", "total")


def report(result: CostReport) -> None:
    """The rows with a total line, then the budgets; says so when nothing was spent."""
    since = f" since {result.since.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if result.since else ""
    header = f"tag {result.tag_key}" if result.by == "tag" else result.by
    table = Table(title=f"Cost by {header}{since}, largest first", title_justify="left")
    table.add_column(header, no_wrap=True)
    for col in (*_MONEY_COLUMNS, "entries"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in (*result.rows, result.total):
        if row is result.total:
            table.add_section()
        table.add_row(
            escape(row.key),
            _amount(row.compute_usd),
            _amount(row.egress_usd),
            _amount(row.other_usd),
            f"[bold]{_money(row.total_usd)}[/]",
            f"{row.entries:,}",
        )
    if result.rows:
        console().print(table)
    else:
        console().print(f"[dim]No cost entries{since}.[/]")
    if result.budgets:
        budgets_table(list(result.budgets))


def _amount(value: float) -> str:
    """A kind's column: a dim dash where nothing was spent, so the amounts stand out."""
    return _money(value) if value else "[dim]-[/]"


def budgets_table(budgets: list[BudgetStatus]) -> None:
    """Each budget in its current period: limit, spent, left and percent used; over-budget in red."""
    table = Table(title="Budgets (current period)", title_justify="left")
    for col in ("budget", "period", "limit", "spent", "left", "used", "status"):
        table.add_column(col, justify="right" if col in ("limit", "spent", "left", "used") else "left")
    for b in budgets:
        left = _money(b.remaining_usd) if b.remaining_usd >= 0 else f"-{_money(-b.remaining_usd)}"
        status = "[red]OVER[/]" if b.exceeded else "[green]ok[/]"
        table.add_row(
            escape(b.name),
            b.period,
            _money(b.limit_usd),
            _money(b.spent_usd),
            left,
            f"{percent_used(b):.1f}%",
            status,
        )
    console().print(table)
