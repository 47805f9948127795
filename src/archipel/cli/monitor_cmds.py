"""``archipel monitor`` and ``archipel triggers``: drift where the samples are, alerts, and what they start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from archipel.cli.common import open_engine, open_workspace

__all__ = ["monitor_app", "show_reports", "triggers_app"]

monitor_app = typer.Typer(
    help="Drift and service levels per site: status, run, report, alerts.", no_args_is_help=True
)
triggers_app = typer.Typer(help="Which alerts start which retraining pipeline.", no_args_is_help=True)


def _window(text: str) -> float:
    from archipel.models.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def show_reports(reports: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from archipel.cli import render

    if not reports:
        render.console().print(
            "No drift check yet: `archipel monitor run DEPLOYMENT` (or `archipel server`)."
        )
        return
    _side_by_side(reports)
    for r in reports:
        colour = "red" if r["verdict"] == "drift" else "green" if r["verdict"] == "ok" else "yellow"
        render.console().print(
            f"[bold]{r['deployment']}[/] at [bold]{r['site']}[/] ({r['model']}/{r['version']}): [{colour}]"
            f"{r['verdict']}[/], {r['rows']} rows {r['since'][:19]} → {r['until'][:19]} UTC"
            + (f"; {r['share_drifted']:.0%} of features drifted" if r["share_drifted"] is not None else "")
            + (f" ({r['note']})" if r.get("note") else ""),
            highlight=False,
        )
        skew = r.get("schema") or {}
        if skew and not skew.get("ok", True):
            missing, extra, changed = skew.get("missing"), skew.get("extra"), skew.get("type_changes")
            render.console().print(
                f"  [yellow]schema skew[/]: missing {missing}, extra {extra}, types {changed}"
            )
        for outcome in r.get("loop", []):
            render.console().print(f"  trigger {outcome['trigger']}: {outcome['stage']}: {outcome['reason']}")
        if not r["features"]:
            continue
        table = Table("feature", "test", "score", "threshold", "PSI", "verdict", "rows")
        for f in [*r["features"], *r["predictions"]]:
            verdict = "[red]drift[/]" if f.get("drifted") else "ok"
            table.add_row(str(f["feature"]), str(f.get("test")), "-" if f.get("score") is None else f"{f['score']:.4g}",
                          str(f.get("threshold")), "-" if f.get("psi") is None else f"{f['psi']:.3f}", verdict,
                          str(f.get("current_rows", "")))  # fmt: skip
        render.console().print(table)


def _side_by_side(reports: list[dict[str, Any]]) -> None:
    """Per deployment with several sites: one row per feature, one column per site (score and test)."""
    from rich.table import Table

    from archipel.cli import render

    by_deployment: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        by_deployment.setdefault(r["deployment"], []).append(r)
    for name, group in by_deployment.items():
        if len(group) < 2:
            continue
        cells: dict[str, dict[str, str]] = {}
        for r in group:
            for f in [*r["features"], *r["predictions"]]:
                text = "-" if f.get("score") is None else f"{f['score']:.3g} {f.get('test')}"
                cells.setdefault(str(f["feature"]), {})[r["site"]] = (
                    f"[red]{text}[/]" if f.get("drifted") else text
                )
        table = Table("feature", *(f"{r['site']}\n{r['verdict']}, {r['rows']} rows" for r in group),
                      title=f"{name}: every site side by side")  # fmt: skip
        for feature, by_site in cells.items():
            table.add_row(feature, *(by_site.get(r["site"], "-") for r in group))
        render.console().print(table)


@monitor_app.command("status")
def monitor_status_command(
    deployment: Annotated[str | None, typer.Argument(help="One deployment (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every site's latest drift check side by side: per feature its test, score, threshold and verdict."""
    from archipel.cli.common import print_json
    from archipel.services.monitoring import monitor_status

    ws = open_workspace()
    reports = monitor_status(open_engine(ws), deployment)
    print_json(reports) if as_json else show_reports(reports)


@monitor_app.command("run")
def monitor_run_command(
    deployment: Annotated[str, typer.Argument()],
    window: Annotated[
        str | None, typer.Option(help="How far back (30m, 1h, 2d); default the deployment's.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check now: a drift job at each site holding samples, the service levels from the replicas; alerts fire
    their triggers."""
    from archipel.cli.common import print_json
    from archipel.services.monitoring import check_slo, run_monitor

    ws = open_workspace()
    engine = open_engine(ws)
    reports = run_monitor(ws, engine, deployment, window_s=_window(window) if window else None)
    answer = {"drift": reports, "slo": check_slo(ws, engine, deployment)}
    if as_json:
        print_json(answer)
    else:
        show_check(answer)


def show_check(answer: dict) -> None:
    """What ``monitor run`` found (here or from a remote control plane): the drift reports, then service levels."""
    from archipel.cli import render

    show_reports(answer["drift"])
    for row in answer["slo"]:
        p99 = "-" if row["p99_ms"] is None else f"<= {row['p99_ms']:g} ms"
        render.console().print(
            f"{row['site']}: {row['answers']} answers, {row['error_rate']:.2%} errors, p99 {p99}"
        )


@monitor_app.command("report")
def monitor_report_command(
    deployment: Annotated[str, typer.Argument()],
    html: Annotated[Path, typer.Option("--html", help="Where to write the page.")] = Path("drift.html"),
) -> None:
    """A page with every site's latest verdict and per-feature distributions (reference vs recent requests)."""
    from archipel.cli import render
    from archipel.errors import NotFound
    from archipel.monitoring.report_html import render_report
    from archipel.services.monitoring import monitor_status

    ws = open_workspace()
    reports = monitor_status(open_engine(ws), deployment)
    if not reports:
        raise NotFound(f"no drift check of {deployment} yet: run `archipel monitor run {deployment}`")
    html.write_text(render_report(deployment, reports), encoding="utf-8")
    render.console().print(f"wrote {html} ({len(reports)} sites)")


@monitor_app.command("alerts")
def monitor_alerts_command(
    deployment: Annotated[str | None, typer.Argument()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent alerts, newest first."""
    from rich.table import Table

    from archipel.cli import render
    from archipel.cli.common import print_json
    from archipel.services.monitoring import list_alerts

    ws = open_workspace()
    alerts = list_alerts(open_engine(ws), deployment)
    if as_json:
        print_json(alerts)
        return
    table = Table("id", "when (UTC)", "kind", "deployment", "site", "reason")
    for a in alerts:
        table.add_row(
            str(a["id"]), a["created_at"][:19], a["kind"], a["deployment"], a["site"] or "-", a["reason"]
        )
    render.console().print(table)


@triggers_app.command("ls")
def triggers_ls(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The triggers of archipel.yaml: alert kinds, deployment, pipeline, gate alias, rollout, cooldown."""
    from rich.table import Table

    from archipel.cli import render
    from archipel.cli.common import print_json

    ws = open_workspace()
    from archipel.services.monitoring import list_triggers

    rows = list_triggers(ws)
    if as_json:
        print_json(rows)
        return
    table = Table("trigger", "on", "deployment", "pipeline", "gate of", "rollout", "cooldown")
    for r in rows:
        table.add_row(r["name"], ", ".join(r["on"]), r["deployment"], r["pipeline"], r["promote_to"],
                      "yes" if r["rollout"] else "no", f"{r['cooldown_s']:g} s")  # fmt: skip
    render.console().print(table)
