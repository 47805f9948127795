"""The same training example, unchanged, at a site whose compute is a Ray cluster (the Jobs API): same model
bytes as at a local site, and a Ray job stopped mid-run (a preempted worker) recovers from its checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from archipel.services.apply import apply_plan, plan_apply
from archipel.services.reconciler import Reconciler
from archipel.services.runs import get_run
from archipel.workspace import load_workspace
from tests.executor.conftest import submit, write_job
from tests.ray_head import RayHead

pytestmark = pytest.mark.ray

JOB = """
name: sgd-{site}
run: python train.py
inputs: [patients-eu]
outputs: {{model: {{kind: artifact}}}}
envs: {{TRAIN_STEPS: "60", STEP_SECONDS: "0.1"}}
resources: {{cpus: 1, memory: 1GiB, spot: false}}
constraints: {{sites: [{site}]}}
checkpoint: 0.5s
"""


def _on_ray(ws: Any, engine: Any, head: RayHead, site: str) -> Any:
    text = ws.file.read_text()
    start = text.index(f"  {site}:")
    at = text.index("compute: local", start)
    ws.file.write_text(text[:at] + f"compute: ray+{head.address}" + text[at + len("compute: local") :])
    ws = load_workspace(ws.root)
    apply_plan(ws, engine, plan_apply(ws, engine))
    return ws


def test_the_same_example_runs_unchanged_on_ray_and_recovers_there(
    runs_ws: tuple[Any, Any], ray_head: RayHead, tmp_path: Path
) -> None:
    ws, engine = runs_ws
    from archipel.services.data import replicate_dataset

    replicate_dataset(ws, engine, "patients-eu", "gcp-europe-west4")
    ws = _on_ray(ws, engine, ray_head, "onprem-frankfurt")
    assert ws.site("onprem-frankfurt").compute.startswith("ray+http://")
    local = submit(ws, engine, write_job(tmp_path / "local", JOB.format(site="gcp-europe-west4")))
    reconciler = Reconciler(ws, engine)
    stopped = False
    try:
        assert reconciler.drive(local, timeout_s=120) == "SUCCEEDED"
        # submitted once the local run is done, so it is watched from its first checkpoint on
        on_ray = submit(ws, engine, write_job(tmp_path / "ray", JOB.format(site="onprem-frankfurt")))
        deadline = time.monotonic() + 240
        while (state := reconciler.state_of(on_ray)) not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            assert time.monotonic() < deadline, get_run(engine, on_ray).steps
            reconciler.tick()
            view = get_run(engine, on_ray)
            ckpt = view.steps[0]["checkpoint"]
            early = ckpt is not None and ckpt["step"] <= 45  # stopped while steps are left to train
            if not stopped and early and view.attempts[-1]["state"] == "RUNNING":
                ws.compute("onprem-frankfurt").cancel(view.attempts[-1]["job_id"])  # Ray stops it: preempted
                stopped = True
            time.sleep(0.1)
    finally:
        reconciler.close()
    assert state == "SUCCEEDED" and stopped
    one, two = get_run(engine, local), get_run(engine, on_ray)
    assert [a["site"] for a in two.attempts] == ["onprem-frankfurt", "onprem-frankfurt"]
    assert two.steps[0]["recoveries"] == 1
    resumed = min(m["at_step"] for m in two.metrics if m["key"] == "train_accuracy" and m["attempt"] == 2)
    assert resumed > 0  # attempt 2 started from the checkpoint, not from scratch
    assert two.steps[0]["outputs"]["model"]["sha256"] == one.steps[0]["outputs"]["model"]["sha256"]
