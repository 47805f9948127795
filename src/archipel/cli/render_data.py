"""Rendering for datasets, policy decisions and the audit log (Rich lives in the CLI only)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from archipel.cli.render import console
from archipel.models.units import format_size

if TYPE_CHECKING:
    from archipel.policy.audit import AuditEntry, VerifyReport
    from archipel.policy.engine import Decision
    from archipel.services.data import AddReport, DatasetView, EraseReport, ReplicateReport

__all__ = [
    "added",
    "audit_table",
    "dataset_detail",
    "datasets_table",
    "decision",
    "erased",
    "replicated",
    "transfer_progress",
    "verify_report",
    "versions_table",
]

_OUTCOME_STYLE = {"allowed": "green", "done": "green", "refused": "red", "failed": "red"}


def added(report: AddReport) -> None:
    v = report.version
    if not report.created:
        console().print(
            f"Unchanged: {v.ref} already holds these bytes (sha256 {v.sha256[:12]}…); no new version."
        )
        return
    site = next(iter(v.replicas))
    console().print(
        f"Added [bold]{v.ref}[/]: {v.rows:,} rows, {len(v.columns)} columns, {format_size(v.bytes)} Parquet "
        f"at {escape(site)}{' (sealed)' if v.replicas[site] else ''}; sha256 {v.sha256[:16]}…"
    )


def datasets_table(views: list[DatasetView]) -> None:
    table = Table(title="Datasets", title_justify="left")
    for col in ("name", "class", "jurisdiction", "home", "latest", "rows", "size", "replicas"):
        table.add_column(
            col, justify="right" if col in ("rows", "size") else "left", no_wrap=col != "replicas"
        )
    for view in views:
        latest = view.latest
        table.add_row(
            escape(view.name),
            view.classification,
            view.jurisdiction,
            escape(view.home_site),
            latest.ref if latest else "[dim]erased[/]",
            f"{latest.rows:,}" if latest else "",
            format_size(latest.bytes) if latest else "",
            ", ".join(sorted(latest.replicas)) if latest else "",
        )
    console().print(table)
    if not views:
        console().print(
            "[dim]No datasets yet: archipel data add NAME FILE --site SITE --classification CLASS[/]"
        )


def dataset_detail(view: DatasetView) -> None:
    console().print(
        f"[bold]{escape(view.name)}[/] ({view.classification}, from {view.jurisdiction}), home "
        f"{escape(view.home_site)}{': ' + escape(view.description) if view.description else ''}"
    )
    latest = view.latest
    if latest is not None:
        schema = Table(title=f"Schema of {latest.ref}", title_justify="left")
        schema.add_column("column")
        schema.add_column("type")
        schema.add_column("nullable")
        for col in latest.columns:
            schema.add_row(escape(col["name"]), escape(col["type"]), "yes" if col["nullable"] else "no")
        console().print(schema)
    versions_table(view)


def versions_table(view: DatasetView) -> None:
    table = Table(title=f"Versions of {view.name}", title_justify="left")
    for col in ("version", "rows", "size", "sha256", "created", "replicas"):
        table.add_column(col, justify="right" if col in ("rows", "size") else "left")
    for v in view.versions:
        replicas = ", ".join(f"{s}{' (sealed)' if k else ''}" for s, k in sorted(v.replicas.items()))
        table.add_row(
            v.ref,
            f"{v.rows:,}",
            format_size(v.bytes),
            v.sha256[:16] + "…",
            f"{v.created_at:%Y-%m-%d %H:%M}",
            replicas if v.erased_at is None else f"[red]erased {v.erased_at:%Y-%m-%d %H:%M}[/]",
        )
    console().print(table)


@contextmanager
def transfer_progress(*, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar for copies large enough to watch (callbacks below 8 MiB total draw nothing)."""
    if not enabled or not console().is_terminal:
        yield None
        return
    bar = Progress(
        TextColumn("copy"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console(),
        transient=True,
    )
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if total < 8 * 1024 * 1024:
            return
        if task is None:
            task = bar.add_task("copy", total=total)
        bar.update(task, completed=done)

    with bar:
        yield update


def replicated(report: ReplicateReport) -> None:
    if report.already_present or report.bytes_moved == 0:
        console().print(
            f"{report.ref} is already at {escape(report.dest)} (verified); 0 bytes moved, $0 egress."
        )
        return
    console().print(
        f"Replicated [bold]{report.ref}[/] {escape(report.source)} → {escape(report.dest)}: "
        f"{format_size(report.bytes_moved)} moved and verified in {report.seconds:.2f} s"
        f"{', sealed with the destination key' if report.sealed else ''}; "
        + (
            f"egress ${report.egress_usd:.6f} at ${report.egress_per_gb:.3f}/GB."
            if report.egress_per_gb
            else f"no metered egress from {escape(report.source)} ($0/GB)."
        )
    )
    console().print(f"[dim]{escape(report.decision.reason)}[/]")


def erased(report: EraseReport) -> None:
    total = sum(len(keys) for keys in report.deleted.values())
    console().print(
        f"Erased {', '.join(report.refs)}: {total} object(s) deleted at "
        f"{', '.join(sorted(report.deleted)) or 'no site'}. The audit log keeps the fact, not the data."
    )
    derived = [f"{kind}: {', '.join(items)}" for kind, items in report.derived.items() if items]
    console().print("Derived artifacts marked: " + ("; ".join(derived) if derived else "none recorded."))


def decision(d: Decision) -> None:
    verdict = "[green]allowed[/]" if d.allowed else "[red]refused[/]"
    console().print(f"{d.action} at {escape(d.site)}: {verdict} by rule [bold]{escape(d.rule)}[/]")
    console().print(escape(d.reason))


def audit_table(entries: list[AuditEntry]) -> None:
    """Two lines an entry: what happened (seq, time, actor, action, subject, sites, outcome, rule), then why."""
    for e in entries:
        style = _OUTCOME_STYLE.get(e.outcome, "bold")
        sites = f" @ {escape(', '.join(e.sites))}" if e.sites else ""
        rule = f" [dim]\\[{escape(e.rule)}][/]" if e.rule else ""
        console().print(
            f"[bold]#{e.seq}[/] {e.at:%Y-%m-%d %H:%M:%S} [dim]{escape(e.actor)}[/] {escape(e.action)} "
            f"[bold]{escape(e.subject)}[/]{sites} [{style}]{e.outcome.upper()}[/]{rule}"
        )
        if e.reason:
            console().print(
                f"    {escape(e.reason)}", style="dim" if e.outcome in ("allowed", "done") else None
            )
    if not entries:
        console().print("[dim]No audit entries match.[/]")


def verify_report(report: VerifyReport) -> None:
    if report.ok:
        console().print(
            f"[green]Audit log verified[/]: {report.entries} entries, chain intact, head {report.head_seq} anchored."
        )
    else:
        where = f" (entry {report.bad_seq})" if report.bad_seq is not None else ""
        console().print(f"[red]Audit log verification FAILED[/]{where}: {escape(report.problem)}")
