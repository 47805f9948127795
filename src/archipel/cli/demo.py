"""``archipel demo``: the story so far, on local sites standing in for clouds.

Every figure printed is computed here and written to a JSON summary that the demo's test cross-checks.
The story grows with each capability: now workspace, sites (checked for real), offers, and data with residency
policies, verified replication and the audit log, then a pipeline placed by residency, egress and price,
run there with a killed worker recovered from its checkpoint, its model registered, gated and copied only
where its data allows, served at two sites behind one gateway while one of them is killed, and watched for
drift where its requests are: the drifted site found, the model retrained, gated and rolled out.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.rule import Rule

from archipel.cli import render
from archipel.cli.demo_data import data_step
from archipel.cli.demo_models import models_step
from archipel.cli.demo_monitor import monitor_step
from archipel.cli.demo_plan import plan_step
from archipel.cli.demo_run import run_step
from archipel.cli.demo_serve import serve_step
from archipel.db import connect
from archipel.services.apply import apply_plan, plan_apply
from archipel.services.init import init_workspace
from archipel.services.offers import OfferRequest, find_offers
from archipel.services.sites import check_sites, list_sites

__all__ = ["DEMO_REQUEST", "run_demo"]

DEMO_REQUEST = OfferRequest(cpus=2, memory_gib=8)


def run_demo(root: Path | None, *, summary_path: Path | None = None) -> bool:
    """Run every step; return True only if every step's check held."""
    out = render.console()
    started = time.perf_counter()
    root = root or Path(tempfile.mkdtemp(prefix="archipel-demo-"))
    summary: dict[str, Any] = {"workspace": str(root), "steps": {}}
    checks: dict[str, bool] = {}

    out.print(Rule("1. An archipelago of sites"))
    workspace = init_workspace(root, demo=True, force=True)
    engine = connect(workspace.db_url)
    plan = plan_apply(workspace, engine)
    apply_plan(workspace, engine, plan)
    out.print(
        f"Workspace [bold]{workspace.root}[/]: {len(workspace.spec.sites)} sites applied to the metadata store."
    )
    results = check_sites(workspace, engine)
    render.checks_table(results)
    views, pending = list_sites(workspace, engine)
    render.sites_table(views)
    jurisdictions = sorted({v.spec.jurisdiction for v in views})
    checks["sites_healthy"] = all(r.health == "healthy" for r in results)
    checks["applied"] = not pending
    summary["steps"]["sites"] = {
        "count": len(views),
        "jurisdictions": jurisdictions,
        "health": {r.site: r.health for r in results},
        "storage_check_ms": {r.site: round(r.storage.seconds * 1000, 1) for r in results},
        "compute_check_ms": {r.site: round(r.compute.seconds * 1000, 1) for r in results},
    }

    out.print(Rule("2. What compute costs where"))
    rows = find_offers(workspace, DEMO_REQUEST)
    render.offers_table(rows[:10], DEMO_REQUEST, total=len(rows))
    spot_rows = find_offers(
        workspace, OfferRequest(cpus=DEMO_REQUEST.cpus, memory_gib=DEMO_REQUEST.memory_gib, spot=True)
    )
    checks["offers_found"] = bool(rows)
    if rows:
        cheapest_by_site: dict[str, float] = {}
        for row in rows:
            cheapest_by_site.setdefault(row.site, row.hourly)
        best, worst = rows[0], max(cheapest_by_site.items(), key=lambda kv: kv[1])
        out.print(
            f"Cheapest for {DEMO_REQUEST.cpus:g} vCPU / {DEMO_REQUEST.memory_gib:g} GiB: "
            f"[bold]{best.offer.instance_type}[/] "
            f"at {best.site} for ${best.hourly:.4f}/h; the dearest site's cheapest fit ({worst[0]}) costs "
            f"${worst[1]:.4f}/h, {worst[1] / best.hourly:.2f}x as much."
        )
        summary["steps"]["offers"] = {
            "request": {"cpus": DEMO_REQUEST.cpus, "memory_gib": DEMO_REQUEST.memory_gib},
            "matching": len(rows),
            "cheapest": {
                "site": best.site,
                "instance_type": best.offer.instance_type,
                "hourly_usd": best.hourly,
            },
            "cheapest_by_site": cheapest_by_site,
        }
    if spot_rows:
        s = spot_rows[0]
        out.print(
            f"With spot capacity: {s.offer.instance_type} at {s.site} for ${s.hourly:.4f}/h (may be preempted)."
        )
        summary["steps"]["offers"]["cheapest_spot"] = {
            "site": s.site,
            "instance_type": s.offer.instance_type,
            "hourly_usd": s.hourly,
        }

    data_summary, data_checks = data_step(workspace, engine, out)
    summary["steps"]["data"] = data_summary
    checks.update(data_checks)
    plan_summary, plan_checks = plan_step(workspace, engine, out)
    summary["steps"]["plan"] = plan_summary
    checks.update(plan_checks)
    run_summary, run_checks = run_step(workspace, engine, out)
    summary["steps"]["run"] = run_summary
    checks.update(run_checks)
    models_summary, models_checks = models_step(workspace, engine, out, run_summary["run_id"])
    summary["steps"]["models"] = models_summary
    checks.update(models_checks)
    serve_summary, serve_checks = serve_step(workspace, engine, out)
    summary["steps"]["serving"] = serve_summary
    checks.update(serve_checks)
    monitor_summary, monitor_checks = monitor_step(workspace, engine, out)
    summary["steps"]["monitoring"] = monitor_summary
    checks.update(monitor_checks)

    summary["checks"] = checks
    summary["ok"] = all(checks.values())
    summary["seconds"] = round(time.perf_counter() - started, 2)
    path = summary_path or (workspace.state_dir / "demo-summary.json")
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    out.print(Rule("Next"))
    out.print(
        f"Summary: {path}\nTry: archipel -w {workspace.root} sites ls | offers --cpus 4 --memory 16 --spot | "
        "data ls | data show patients-eu | policy check --data patients-eu --site aws-us-east-1 | audit ls | "
        "plan examples/pipeline.yaml | runs ls | runs show RUN | models show readmission | cost --by site | "
        "monitor status | monitor report readmission --html drift.html | triggers ls"
    )
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        render.console().print(f"[red]demo checks failed: {', '.join(failed)}[/]")
    return not failed
