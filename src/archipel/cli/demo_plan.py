"""The demo's planning step: a training pipeline placed by residency, egress and price, with its reasons."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from sqlalchemy import Engine

from archipel.cli import render_plan
from archipel.models.job import PipelineSpec
from archipel.services.plan import make_plan
from archipel.workspace import Workspace

__all__ = ["DEMO_PIPELINE", "plan_step"]

DEMO_PIPELINE = PipelineSpec.model_validate(
    {
        "name": "malignancy",
        "tags": {"team": "research"},
        "steps": {
            "prepare": {
                "run": "python prepare.py",
                "inputs": ["patients-eu"],
                "outputs": {"features": {"kind": "dataset", "size": "2GiB"}},
                "resources": {"cpus": 2, "memory": "8GiB"},
                "estimate": "30m",
            },
            "train": {
                "needs": ["prepare"],
                "run": "python train.py",
                "inputs": {"features": "steps.prepare.outputs.features"},
                "outputs": {"model": {"kind": "artifact", "size": "50MiB"}},
                "resources": {"cpus": 4, "memory": "16GiB", "spot": "auto"},
                "estimate": "2h",
                "checkpoint": "10m",
            },
        },
    }
)


def plan_step(workspace: Workspace, engine: Engine, out: Console) -> tuple[dict[str, Any], dict[str, bool]]:
    result = make_plan(workspace, engine, DEMO_PIPELINE)
    render_plan.plan(result)
    refused = [
        {
            "step": p.step,
            "site": r.site,
            "rule": r.rule,
            "would_cost_usd": r.would_cost_usd,
            "chosen_cost_usd": p.cost_of(p.chosen),
        }
        for p in result.plan.placements
        for r in p.rejections
        if r.kind == "policy"
    ]
    cheaper_refused = [
        r for r in refused if r["would_cost_usd"] is not None and r["would_cost_usd"] < r["chosen_cost_usd"]
    ]
    for r in cheaper_refused:
        out.print(
            f"Step {r['step']}: {r['site']} would have been ${r['chosen_cost_usd'] - r['would_cost_usd']:.4f} cheaper, "
            f"but rule {r['rule']} keeps EU patient data in the EU."
        )
    summary = {
        "fingerprint": result.fingerprint,
        "total_usd": round(result.plan.total_usd, 6),
        "breakdown": {k: round(v, 6) for k, v in result.plan.breakdown.items()},
        "placements": {
            p.step: {"site": p.chosen.site, "offer": p.chosen.offer, "spot": p.chosen.spot}
            for p in result.plan.placements
        },
        "refused": refused,
        "solver": result.plan.solver,
    }
    checks = {
        "plan_stays_in_eu": all(
            workspace.site(p.chosen.site).jurisdiction == "EU" for p in result.plan.placements
        ),
        "us_site_refused_by_policy": any(r["site"] == "aws-us-east-1" for r in refused),
    }
    return summary, checks
