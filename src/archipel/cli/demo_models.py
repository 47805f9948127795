"""The demo's registry step: the model the training run logged is an ONNX version with lineage; it passes its
gate to production, is copied to the other EU site and refused for the US one, and predicts the same there."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from sqlalchemy import Engine

from archipel.cli import render_models
from archipel.cli.demo_data import patient_rows
from archipel.errors import PolicyViolation
from archipel.services.models import get_model, predict, promote, replicate_model
from archipel.workspace import Workspace

__all__ = ["GATE", "MODEL", "PRODUCTION", "models_step"]

MODEL = "malignancy"
"""The name examples/train.py logs its model under; the demo serves it under the same name."""
PRODUCTION = f"{MODEL}@production"
GATE = ["accuracy >= 0.9", "auc >= 0.95", "accuracy >= production.accuracy - 0.01"]


def models_step(
    workspace: Workspace, engine: Engine, out: Console, run_id: str
) -> tuple[dict[str, Any], dict[str, bool]]:
    model = get_model(engine, MODEL)
    version = next(v for v in model.versions if v.lineage.get("run_id") == run_id)
    render_models.version(version)
    promotion = promote(workspace, engine, MODEL, version.version, gates=GATE)
    render_models.promotion(promotion)
    others = [s for s in ("onprem-frankfurt", "gcp-europe-west4") if s != version.home_site]
    copied, moved = replicate_model(workspace, engine, PRODUCTION, others[0])
    out.print(f"Copied {copied.ref} to {others[0]}: {moved} bytes, verified")
    refused_rule = None
    try:
        replicate_model(workspace, engine, PRODUCTION, "aws-us-east-1")
    except PolicyViolation as exc:
        refused_rule = exc.rule
        out.print(f"[red]Refused[/] {copied.ref} → aws-us-east-1 by rule [bold]{exc.rule}[/]: {exc.reason}")
    features = version.signature["feature_names"]
    rows = patient_rows(workspace, engine, features, version.home_site)[:50].tolist()
    home = predict(workspace, engine, PRODUCTION, rows, site=version.home_site)["outputs"]
    there = predict(workspace, engine, PRODUCTION, rows, site=others[0])["outputs"]
    diff = float(np.abs(np.asarray(home["probabilities"]) - np.asarray(there["probabilities"])).max())
    out.print(
        f"{copied.ref} at {others[0]} scores 50 patients exactly as at {version.home_site} (max |diff| {diff:g}); "
        f"accuracy {version.metrics.get('accuracy', float('nan')):.3f}, "
        f"auc {version.metrics.get('auc', float('nan')):.3f}"
    )
    summary = {
        "model": MODEL,
        "version": version.version,
        "sha256": version.sha256,
        "run_id": run_id,
        "datasets": [d["ref"] for d in version.lineage.get("datasets", [])],
        "metrics": version.metrics,
        "alias": "production",
        "replicas": copied.replicas,
        "refused_site": "aws-us-east-1",
        "refused_rule": refused_rule,
        "max_prediction_diff": diff,
        "conversion_max_abs_diff": version.card.get("conversion_check", {}).get("max_abs_diff"),
    }
    checks = {
        "model_registered_with_lineage": bool(summary["datasets"])
        and version.lineage.get("run_id") == run_id,
        "gate_passed": promotion.passed,
        "model_copied_in_eu": others[0] in copied.replicas,
        "model_refused_in_us": refused_rule == "default-personal-data-residency",
        "replica_predicts_the_same": diff == 0.0,
    }
    return summary, checks
