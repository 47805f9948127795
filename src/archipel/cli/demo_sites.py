"""The demo's first step: local sites standing in for two clouds and an on-prem data centre, in two jurisdictions,
checked for real (a probe written, read and deleted in each site's storage, a process run on its compute), and what
compute costs at each of them from the price catalog."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from sqlalchemy import Engine

from archipel.cli import render
from archipel.services.offers import OfferRequest, find_offers
from archipel.services.sites import check_sites, list_sites
from archipel.workspace import Workspace

__all__ = ["DEMO_REQUEST", "sites_step"]

DEMO_REQUEST = OfferRequest(cpus=2, memory_gib=8)


def sites_step(workspace: Workspace, engine: Engine, out: Console) -> tuple[dict[str, Any], dict[str, bool]]:
    out.print(
        f"Workspace [bold]{workspace.root}[/]: {len(workspace.spec.sites)} sites applied to the metadata store."
    )
    results = check_sites(workspace, engine)
    render.checks_table(results)
    views, pending = list_sites(workspace, engine)
    render.sites_table(views)
    summary: dict[str, Any] = {
        "count": len(views),
        "jurisdictions": sorted({v.spec.jurisdiction for v in views}),
        "health": {r.site: r.health for r in results},
        "storage_check_ms": {r.site: round(r.storage.seconds * 1000, 1) for r in results},
        "compute_check_ms": {r.site: round(r.compute.seconds * 1000, 1) for r in results},
    }
    checks = {"sites_healthy": all(r.health == "healthy" for r in results), "applied": not pending}
    rows = find_offers(workspace, DEMO_REQUEST)
    render.offers_table(rows[:10], DEMO_REQUEST, total=len(rows))
    checks["offers_found"] = bool(rows)
    if not rows:
        return summary, checks
    cheapest_by_site: dict[str, float] = {}
    for row in rows:
        cheapest_by_site.setdefault(row.site, row.hourly)
    best, worst = rows[0], max(cheapest_by_site.items(), key=lambda kv: kv[1])
    out.print(
        f"Cheapest for {DEMO_REQUEST.cpus:g} vCPU / {DEMO_REQUEST.memory_gib:g} GiB: "
        f"[bold]{best.offer.instance_type}[/] at {best.site} for ${best.hourly:.4f}/h; the dearest site's cheapest "
        f"fit ({worst[0]}) costs ${worst[1]:.4f}/h, {worst[1] / best.hourly:.2f}x as much."
    )
    offers: dict[str, Any] = {
        "request": {"cpus": DEMO_REQUEST.cpus, "memory_gib": DEMO_REQUEST.memory_gib},
        "matching": len(rows),
        "cheapest": {"site": best.site, "instance_type": best.offer.instance_type, "hourly_usd": best.hourly},
        "cheapest_by_site": cheapest_by_site,
    }
    spot = find_offers(
        workspace, OfferRequest(cpus=DEMO_REQUEST.cpus, memory_gib=DEMO_REQUEST.memory_gib, spot=True)
    )
    if spot:
        s = spot[0]
        out.print(
            f"With spot capacity: {s.offer.instance_type} at {s.site} for ${s.hourly:.4f}/h (may be preempted)."
        )
        offers["cheapest_spot"] = {
            "site": s.site,
            "instance_type": s.offer.instance_type,
            "hourly_usd": s.hourly,
        }
    summary["offers"] = offers
    return summary, checks
