"""The data-parallel example (examples/train_ddp.py) at a site whose compute is a Ray cluster: Ray Train runs
PyTorch DDP on 2 workers of the session's Ray head, rank 0 checkpoints through archipel, the driver publishes
the model, and a stopped Ray job resumes from rank 0's checkpoint on every worker."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from archipel.services.apply import apply_plan, plan_apply
from archipel.services.reconciler import Reconciler
from archipel.services.runs import get_run
from archipel.workspace import load_workspace
from tests.conftest import require
from tests.executor.conftest import submit, write_job
from tests.ray_head import RayHead


@pytest.fixture(autouse=True)
def _torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        require("PyTorch", "the DDP example needs it (make test installs the CPU build)")


pytestmark = pytest.mark.ray

SITE = "onprem-frankfurt"
JOB = """
name: ddp
run: python train_ddp.py
inputs: [patients-eu]
outputs: {{model: {{kind: artifact}}}}
envs: {{EPOCHS: "{epochs}", WORKERS: "2"}}
resources: {{cpus: 2, memory: 1GiB, spot: false}}
constraints: {{sites: [{site}]}}
checkpoint: 0.1s
retries: {retries}
"""


def _on_ray(ws: Any, engine: Any, head: RayHead) -> Any:
    text = ws.file.read_text()
    at = text.index("compute: local", text.index(f"  {SITE}:"))
    ws.file.write_text(text[:at] + f"compute: ray+{head.address}" + text[at + len("compute: local") :])
    ws = load_workspace(ws.root)
    apply_plan(ws, engine, plan_apply(ws, engine))
    return ws


def _submit(ws: Any, engine: Any, folder: Path, *, epochs: int, retries: int) -> str:
    text = JOB.format(epochs=epochs, site=SITE, retries=retries)
    return submit(ws, engine, write_job(folder, text, scripts=("train_ddp.py",)))


def _check_ended(ws: Any, engine: Any, run_id: str, state: str) -> Any:
    view = get_run(engine, run_id)
    if state != "SUCCEEDED":
        log, _ = ws.compute(SITE).logs(view.attempts[-1]["job_id"], max_bytes=1 << 22)
        pytest.fail(f"the run ended {state}: {view.steps}\n{log[-6000:]}")
    return view


def _no_training_left(ws: Any, head: RayHead) -> None:
    """No job of this workspace runs on the shared head, and no Ray Train actor is left alive."""
    assert not [job for job in ws.compute(SITE).list_jobs() if not job.state.terminal]
    deadline = time.monotonic() + 20
    while True:
        with urllib.request.urlopen(f"{head.address}/api/v0/actors?limit=1000", timeout=10) as response:
            actors = json.loads(response.read())["data"]["result"]["result"]
        alive = [
            a["class_name"]
            for a in actors
            if a["state"] != "DEAD" and a["class_name"] in ("TrainController", "RayTrainWorker")
        ]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive


def test_ddp_example_trains_on_two_ray_workers_and_publishes_the_model(
    runs_ws: tuple[Any, Any], ray_head: RayHead, tmp_path: Path
) -> None:
    ws, engine = runs_ws
    ws = _on_ray(ws, engine, ray_head)
    epochs = 8  # ~35 ms an epoch: past the 0.1 s checkpoint interval even on a fast run
    run_id = _submit(ws, engine, tmp_path / "job", epochs=epochs, retries=0)
    reconciler = Reconciler(ws, engine)
    try:
        state = reconciler.drive(run_id, timeout_s=240)
    finally:
        reconciler.close()
    view = _check_ended(ws, engine, run_id, state)
    assert [a["site"] for a in view.attempts] == [SITE]
    metrics = {(m["key"], m["at_step"]): m["value"] for m in view.metrics}
    assert metrics[("workers", epochs)] == 2  # Ray Train's world size, as rank 0 saw it
    assert metrics[("accuracy", epochs)] > 0.6
    assert sorted(step for key, step in metrics if key == "loss") == list(range(1, epochs + 1))
    assert view.steps[0]["checkpoint"] is not None  # rank 0 saved through archipel's SDK
    output = view.steps[0]["outputs"]["model"]
    data = ws.storage(SITE).get(output["key"])
    assert hashlib.sha256(data).hexdigest() == output["sha256"]
    model = json.loads(data)
    assert len(model["weights"]["0.weight"][0]) == len(model["features"])
    _no_training_left(ws, ray_head)


@pytest.mark.slow
def test_ddp_example_stopped_on_ray_resumes_from_rank_0s_checkpoint(
    runs_ws: tuple[Any, Any], ray_head: RayHead, tmp_path: Path
) -> None:
    ws, engine = runs_ws
    ws = _on_ray(ws, engine, ray_head)
    epochs = 150  # ~35 ms an epoch here: a few seconds in which to stop the job mid-training
    run_id = _submit(ws, engine, tmp_path / "job", epochs=epochs, retries=1)
    reconciler = Reconciler(ws, engine)
    stopped = False
    deadline = time.monotonic() + 300
    try:
        while (state := reconciler.state_of(run_id)) not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            assert time.monotonic() < deadline, get_run(engine, run_id).steps
            reconciler.tick()
            view = get_run(engine, run_id)
            if not stopped and view.steps[0]["checkpoint"] and view.attempts[-1]["state"] == "RUNNING":
                ws.compute(SITE).cancel(view.attempts[-1]["job_id"])  # Ray stops it: a preempted cluster
                stopped = True
            time.sleep(0.1)
    finally:
        reconciler.close()
    view = _check_ended(ws, engine, run_id, state)
    assert stopped and view.steps[0]["recoveries"] == 1
    assert [a["site"] for a in view.attempts] == [SITE, SITE]
    losses = {
        a: [m["at_step"] for m in view.metrics if m["key"] == "loss" and m["attempt"] == a] for a in (1, 2)
    }
    assert min(losses[2]) > 1  # both workers started attempt 2 from the checkpoint, not from scratch
    assert max(losses[2]) == epochs and min(losses[2]) <= max(losses[1]) + 1
    final = {m["key"]: m["value"] for m in view.metrics if m["attempt"] == 2 and m["at_step"] == epochs}
    assert final["workers"] == 2 and final["accuracy"] > 0.6
    _no_training_left(ws, ray_head)
