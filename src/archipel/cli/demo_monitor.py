"""The demo's monitoring step: requests at one EU site drift (the nuclei's mean texture up by one standard
deviation, as a recalibrated scanner would shift it), a drift job at each site finds it there and only there, and the
trigger closes the loop: the pipeline retrains where the patients may be, the new version meets the production gate
and rolls out to the deployment."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import yaml
from rich.console import Console
from sqlalchemy import Engine

from archipel.cli.demo_data import patient_rows
from archipel.cli.demo_models import GATE, MODEL, PRODUCTION
from archipel.cli.demo_run import examples_folder
from archipel.cli.monitor_cmds import show_reports
from archipel.models.deployment import DeploymentSpec
from archipel.services.deployments import deploy, down, get_deployment
from archipel.services.models import get_version
from archipel.services.monitoring import run_monitor
from archipel.workspace import Workspace, load_workspace

__all__ = ["monitor_step"]

DRIFTED, STEADY = "onprem-frankfurt", "gcp-europe-west4"
SHIFTED = "mean_texture"
ROWS = 2400  # the replicas' samplers write every 2000 rows
TRIGGER = {"retrain-on-drift": {"deployment": MODEL, "on": ["drift"], "pipeline": "jobs/retrain.yaml"}}


def monitor_step(
    workspace: Workspace, engine: Engine, out: Console
) -> tuple[dict[str, Any], dict[str, bool]]:
    workspace = _with_trigger(workspace)
    spec = DeploymentSpec.model_validate({
        "name": MODEL, "model": PRODUCTION, "sites": [DRIFTED, STEADY], "sample_rate": 1.0,
        "monitoring": {"window_s": 900, "drift_share": 0.1, "min_rows": 300, "min_count_per_bin": 10},
    })  # fmt: skip
    urls = {r["site"]: r["url"] for r in deploy(workspace, engine, spec).replicas}
    before = get_deployment(engine, MODEL).version
    try:
        features = get_version(engine, PRODUCTION).signature["feature_names"]
        rows = patient_rows(workspace, engine, features, DRIFTED)
        rng = np.random.default_rng(8)
        shift = float(rows[:, features.index(SHIFTED)].std())
        for site in (DRIFTED, STEADY):
            sent = rows[rng.integers(0, len(rows), ROWS)].copy()
            if site == DRIFTED:
                sent[:, features.index(SHIFTED)] += shift
            for part in np.array_split(sent, 6):
                body = {"inputs": [{"name": "input", "shape": list(part.shape), "datatype": "FP32",
                                    "data": part.reshape(-1).tolist()}]}  # fmt: skip
                httpx.post(f"{urls[site]}/v2/models/{MODEL}/infer", json=body, timeout=30).raise_for_status()
        out.print(
            f"Sent {ROWS} patients to each site; at {DRIFTED} their {SHIFTED} is {shift:.1f} higher (1 std)."
        )
        _wait_for_samples(workspace, engine)
        reports = run_monitor(workspace, engine, MODEL)
        show_reports(reports)
    finally:
        down(workspace, engine, MODEL)
    by_site = {r["site"]: r for r in reports}
    drifted = by_site.get(DRIFTED, {})
    loop = (drifted.get("loop") or [{}])[-1]
    after = get_deployment(engine, MODEL).version
    new = get_version(engine, PRODUCTION)
    feature = next((f for f in drifted.get("features", []) if f["feature"] == SHIFTED), {})
    out.print(
        f"{DRIFTED}: {', '.join(drifted.get('drifted', [])) or 'nothing'} drifted ({feature.get('test')} "
        f"{feature.get('score', float('nan')):.3f} > {feature.get('threshold')}, PSI {feature.get('psi', 0):.2f}) on "
        f"{drifted.get('rows')} sampled rows; {STEADY}: {by_site.get(STEADY, {}).get('verdict')}. Only these "
        f"aggregates left the sites. The trigger: {loop.get('stage')} ({loop.get('reason')}); "
        f"{MODEL}/{new.version} accuracy {new.metrics.get('accuracy', float('nan')):.3f}."
    )
    summary = {
        "reports": {s: {"verdict": r["verdict"], "rows": r["rows"], "drifted": r["drifted"], "id": r["id"]}
                    for s, r in by_site.items()},
        "shifted_feature": SHIFTED, "shift": shift, "score": feature.get("score"), "test": feature.get("test"),
        "loop": loop, "version_before": before, "version_after": after,
    }  # fmt: skip
    checks = {
        "drift_found_at_one_site": drifted.get("drifted") == [SHIFTED]
        and by_site.get(STEADY, {}).get("verdict") == "ok",
        "loop_rolled_out": loop.get("stage") == "rolled-out" and after == before + 1 == new.version,
    }
    return summary, checks


def _with_trigger(workspace: Workspace) -> Workspace:
    """archipel.yaml gains the trigger, as a user would write it; the retraining pipeline is examples/retrain.yaml."""
    (workspace.root / "jobs" / "retrain.yaml").write_text((examples_folder() / "retrain.yaml").read_text())
    text = workspace.file.read_text(encoding="utf-8")
    if "\ntriggers:" not in text:
        added = {"models": {MODEL: {"gates": {"production": GATE}}}, "triggers": TRIGGER}
        workspace.file.write_text(text + "\n" + yaml.safe_dump(added, sort_keys=False), "utf-8")
    return load_workspace(workspace.root)


def _wait_for_samples(workspace: Workspace, engine: Engine) -> None:
    """Until each replica's sampler has written its 2000 rows (it writes every 2000 rows or 10 s)."""
    import io
    import time

    import pyarrow.parquet as pq

    version = get_deployment(engine, MODEL).version
    deadline = time.monotonic() + 30
    for site in (DRIFTED, STEADY):
        store = workspace.storage(site)
        while sum(pq.read_metadata(io.BytesIO(store.get(i.key))).num_rows
                  for i in store.list(f"samples/{MODEL}/{version}/{site}/")) < 2000:  # fmt: skip
            if time.monotonic() > deadline:
                raise TimeoutError(f"the request samples at {site} did not reach 2000 rows in 30 s")
            time.sleep(0.1)
