"""Rendering for the CLI: the only place that knows about Rich, colours and table layout."""

from __future__ import annotations

import os
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from archipel.models.units import format_size

if TYPE_CHECKING:
    from archipel.services.apply import ApplyPlan
    from archipel.services.offers import OfferRequest, SiteOffer
    from archipel.services.sites import SiteCheck, SiteView

__all__ = ["apply_plan", "checks_table", "console", "error", "offers_table", "records", "sites_table"]

_HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unreachable": "red", "unknown": "dim"}


@cache
def console() -> Console:
    from archipel.settings import settings

    con = Console(no_color=settings().no_color, highlight=False, soft_wrap=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con.width = (
            120  # logs and pipes (e.g. `make demo` in CI): Rich's 80 columns would squeeze every table
        )
    return con


@cache
def _err_console() -> Console:
    from archipel.settings import settings

    return Console(stderr=True, no_color=settings().no_color, highlight=False)


def error(err: BaseException) -> None:
    """One paragraph on stderr: the error's class in plain words and its message; never a traceback."""
    label = type(err).__name__
    _err_console().print(f"[bold red]error[/] ({label}): {escape(str(err))}")


def _money(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def sites_table(views: list[SiteView]) -> None:
    table = Table(title="Sites", title_justify="left")
    for col in ("name", "provider", "region", "jurisdiction", "storage", "compute", "capacity", "health"):
        table.add_column(
            col, no_wrap=col in ("name", "storage", "region", "jurisdiction", "capacity", "health")
        )
    for v in views:
        cap = v.spec.capacity
        capacity = f"{cap.cpus:g} cpu, {format_size(cap.memory)}"
        if cap.accelerators:
            capacity += ", " + ", ".join(f"{k}:{n}" for k, n in cap.accelerators.items())
        health = v.health if v.spec.enabled else "disabled"
        style = _HEALTH_STYLE.get(health, "dim")
        table.add_row(
            escape(v.name),
            v.spec.provider,
            escape(v.spec.region),
            v.spec.jurisdiction,
            escape(v.spec.storage),
            escape(v.spec.compute),
            capacity,
            f"[{style}]{health}[/]",
        )
    console().print(table)


def checks_table(results: list[SiteCheck]) -> None:
    table = Table(title="Site checks", title_justify="left")
    for col in ("site", "health", "storage", "compute"):
        table.add_column(col)
    for r in results:
        style = _HEALTH_STYLE.get(r.health, "dim")
        storage = ("[green]ok[/] " if r.storage.ok else "[red]FAIL[/] ") + escape(r.storage.detail)
        compute = ("[green]ok[/] " if r.compute.ok else "[red]FAIL[/] ") + escape(r.compute.detail)
        table.add_row(escape(r.site), f"[{style}]{r.health}[/]", storage, compute)
    console().print(table)


def offers_table(rows: list[SiteOffer], request: OfferRequest, *, total: int) -> None:
    what = f"{request.cpus:g} vCPU, {request.memory_gib:g} GiB"
    if request.accelerator:
        what += f", {request.accelerator}:{request.accelerator_count}"
    kind = "spot" if request.spot else "on-demand"
    table = Table(
        title=f"Offers for {what} ({kind}), cheapest first", title_justify="left", box=box.SIMPLE_HEAD
    )
    for col in ("site", "jurisdiction", "instance", "vCPU", "memory", "accel.", "$/hour", "src"):
        table.add_column(
            col, justify="right" if col in ("vCPU", "memory", "$/hour") else "left", no_wrap=True
        )
    sources: dict[str, int] = {}
    for row in rows:
        o = row.offer
        acc = f"{o.accelerator}:{o.accelerator_count}" if o.accelerator else ""
        table.add_row(
            escape(row.site),
            row.jurisdiction,
            escape(o.instance_type),
            f"{o.vcpus:g}",
            f"{o.memory_gib:g} GiB",
            acc,
            _money(row.hourly),
            f"[dim]\\[{sources.setdefault(f'{o.source} (as of {o.as_of})', len(sources) + 1)}][/]",
        )
    console().print(table)
    for source, number in sources.items():
        console().print(f"[dim]\\[{number}] {escape(source)}[/]")
    if not rows:
        console().print("[yellow]No site offers that; try fewer resources, or --spot off, or add a site.[/]")
    elif total > len(rows):
        console().print(f"[dim]{total - len(rows)} more; raise --limit to see them.[/]")


def apply_plan_json(plan: ApplyPlan) -> dict[str, Any]:
    return {
        "changes": [
            {
                "site": c.name,
                "action": c.action,
                "fields": [{"path": f.path, "old": f.old, "new": f.new} for f in c.fields],
            }
            for c in plan.changes
        ],
        "unchanged": list(plan.unchanged),
    }


def apply_plan(plan: ApplyPlan) -> None:
    out = console()
    if plan.empty:
        out.print(f"No changes: the metadata store matches archipel.yaml ({len(plan.unchanged)} site(s)).")
        return
    marks = {"add": "[green]+[/]", "change": "[yellow]~[/]", "remove": "[red]-[/]"}
    for change in plan.changes:
        out.print(f"{marks[change.action]} site {escape(change.name)} ({change.action})")
        if change.action == "change":
            for f in change.fields:
                out.print(f"    {escape(f.path)}: {escape(repr(f.old))} -> {escape(repr(f.new))}")
    counts = plan.counts()
    out.print(f"Plan: {counts['add']} to add, {counts['change']} to change, {counts['remove']} to remove.")


def is_interactive() -> bool:
    return sys.stdin.isatty()


def _cell(value: Any, width: int = 60) -> str:
    """A value as one table cell: scalars as they are, lists of scalars joined, anything deeper as short JSON."""
    import json

    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.6g}"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, dict | list):
        text = json.dumps(value, default=str, separators=(",", ":"))
    else:
        text = str(value)
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def records(data: Any, *, title: str = "") -> None:
    """Any JSON answer as tables (what the CLI shows for a remote control plane's answers): a list of objects is one
    row each; an object is its scalar fields, then each list of objects under it as a table of its own."""
    out = console()
    if isinstance(data, list):
        if not data:
            out.print(f"[dim]No {title or 'records'}.[/]")
            return
        if not all(isinstance(row, dict) for row in data):
            out.print("\n".join(_cell(v, 200) for v in data))
            return
        columns = list(dict.fromkeys(k for row in data for k in row))
        if len(columns) > 8:  # wide: the nested fields go (--json shows them)
            columns = [c for c in columns if not any(isinstance(row.get(c), dict | list) for row in data)]
        table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in data:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        out.print(table)
        return
    if not isinstance(data, dict):
        out.print(_cell(data, 500))
        return
    nested = {
        k: v for k, v in data.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)
    }
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        if key not in nested:
            table.add_row(escape(str(key)), _cell(value, 100))
    out.print(table)
    for key, rows in nested.items():
        records(rows, title=str(key))
