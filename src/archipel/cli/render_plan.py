"""Rendering a plan: per step the choice, its cost terms, the alternatives and every rejected site."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from archipel.cli.render import console

if TYPE_CHECKING:
    from archipel.services.plan import PlanResult

__all__ = ["console", "plan"]


def _usd(value: float) -> str:
    return f"${value:,.4f}" if abs(value) < 10 else f"${value:,.2f}"


def plan(result: PlanResult) -> None:
    p = result.plan
    out = console()
    out.print(
        f"Plan for [bold]{escape(result.spec.name)}[/] ({len(p.placements)} step(s), objective {p.objective}, "
        f"solver {p.solver}, {p.seconds * 1000:.0f} ms): total [bold]{_usd(p.total_usd)}[/] = "
        + " + ".join(f"{k.removesuffix('_usd').replace('_', ' ')} {_usd(v)}" for k, v in p.breakdown.items())
    )
    if p.budget_name:
        out.print(f"Budget {escape(p.budget_name)}: {_usd(p.budget_usd or 0)} left before this plan.")
    for pin in result.pins.values():
        out.print(f"[dim]pinned {pin.ref} (sha256 {pin.sha256[:12]}…, at {', '.join(pin.replicas)})[/]")
    for placement in p.placements:
        chosen = placement.chosen
        table = Table(title=f"Step {placement.step}", title_justify="left")
        for col in ("", "site", "offer", "spot", "compute", "risk", "egress", "total", "vs chosen"):
            table.add_column(
                col, justify="right" if col in ("compute", "risk", "egress", "total", "vs chosen") else "left"
            )
        shown = [chosen, *[o for o in placement.ranked if o != chosen][:5]]
        for option in shown:
            mark = "[green]✓[/]" if option == chosen else ""
            delta = placement.cost_of(option) - placement.cost_of(chosen)
            egress = placement.cost_of(option) - option.total_usd + option.egress_usd
            table.add_row(
                mark,
                escape(option.site),
                escape(option.offer),
                "spot" if option.spot else "",
                _usd(option.compute_usd),
                _usd(option.risk_usd),
                _usd(egress),
                _usd(placement.cost_of(option)),
                "" if option == chosen else f"{'+' if delta >= 0 else '-'}{_usd(abs(delta))}",
            )
        for r in placement.rejections:
            would = f"would cost {_usd(r.would_cost_usd)}" if r.would_cost_usd is not None else ""
            table.add_row(
                "[red]✗[/]",
                escape(r.site),
                f"[red]{r.kind}[/]",
                "",
                "",
                "",
                "",
                would,
                escape(r.rule or ""),
            )
        out.print(table)
        for r in placement.rejections:
            rule = f", rule {escape(r.rule)}" if r.rule else ""
            out.print(f"  [red]✗[/] {escape(r.site)} ({r.kind}{rule}): {escape(r.detail)}")
        for move in chosen.moves:
            out.print(
                f"  input {escape(move.ref)} moves {move.source_site} → {chosen.site}: "
                f"{move.bytes:,} bytes, {_usd(move.usd)}"
            )
    for m in p.step_moves:
        out.print(f"{m.src} → {m.dst}: {m.bytes:,} bytes {m.src_site} → {m.dst_site}, {_usd(m.usd)} egress")
