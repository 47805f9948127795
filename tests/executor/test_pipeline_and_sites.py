"""Pipelines across sites with reuse of unchanged steps; a dead site moves a run only where policies allow."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from archipel.services.chaos import kill_site, revive_site
from archipel.services.reconciler import Reconciler
from archipel.services.runs import cancel_run, get_run
from tests.executor.conftest import submit, write_job

PIPELINE = """
name: malignancy
models:
  malignancy: {gates: {production: ["accuracy >= 0.99"]}}
steps:
  prepare:
    run: python prepare.py
    inputs: [patients-eu]
    outputs: {features: {kind: dataset, size: 1MiB}}
    resources: {cpus: 1, memory: 1GiB, spot: false}
    constraints: {sites: [onprem-frankfurt]}
  train:
    needs: [prepare]
    run: python train.py
    inputs: {features: steps.prepare.outputs.features}
    outputs: {model: {kind: artifact, size: 1MiB}}
    envs: {TRAIN_STEPS: "30"}
    resources: {cpus: 1, memory: 1GiB, spot: false}
    constraints: {sites: [gcp-europe-west4]}
  report:
    needs: [train]
    run: python report.py
    inputs: {model: steps.train.outputs.model}
    resources: {cpus: 1, memory: 1GiB, spot: false}
"""


def test_a_three_step_pipeline_runs_across_two_sites_then_is_reused_whole(
    runs_ws: tuple[Any, Any], tmp_path: Path
) -> None:
    ws, engine = runs_ws
    spec = write_job(tmp_path / "p", PIPELINE, scripts=("prepare.py", "train.py", "report.py"))
    reconciler = Reconciler(ws, engine)
    try:
        first = submit(ws, engine, spec)
        assert reconciler.drive(first, timeout_s=180) == "SUCCEEDED", get_run(engine, first).steps
        from archipel.services.plan import load_plan_spec, make_plan
        from archipel.services.runs import predict_cached

        replan = make_plan(ws, engine, load_plan_spec(spec))
        assert predict_cached(engine, replan, workdir=spec.parent) == dict.fromkeys(
            ("prepare", "train", "report"), first
        )
        (spec.parent / "report.py").write_text((spec.parent / "report.py").read_text() + "\n# changed\n")
        changed = predict_cached(engine, replan, workdir=spec.parent)
        assert changed == {}  # the code of one step changed: the snapshot hash covers the whole folder
        (spec.parent / "report.py").write_text(
            (spec.parent / "report.py").read_text().removesuffix("\n# changed\n")
        )
        second = submit(ws, engine, spec)
        assert reconciler.drive(second, timeout_s=60) == "SUCCEEDED"
    finally:
        reconciler.close()
    one, two = get_run(engine, first), get_run(engine, second)
    sites = {s["step"]: s["site"] for s in one.steps}
    assert sites["prepare"] == "onprem-frankfurt" and sites["train"] == "gcp-europe-west4"
    assert len({*sites.values()}) == 2
    # the features moved between the sites, verified, and the egress is in the ledger
    assert ws.storage("gcp-europe-west4").exists(one.steps[0]["outputs"]["features"]["key"])
    # the report step read the model the train step published
    report = [m for m in one.metrics if m["step"] == "report" and m["key"] == "features"]
    assert report and report[0]["value"] == 10.0  # the ten mean_* features train.py uses (not mean_roundness)
    assert [s["cached_from"] for s in two.steps] == [first, first, first]
    # the train step logged its model: registered as ONNX with this run's lineage
    from archipel.services.models import get_model

    versions = get_model(engine, "malignancy").versions
    assert len(versions) == 1  # the cached second run registered nothing new
    v = versions[0]
    assert (v.lineage["run_id"], v.lineage["step"], v.home_site) == (first, "train", "gcp-europe-west4")
    assert [d["ref"] for d in v.lineage["datasets"]] == ["patients-eu@v1"] and v.classification == "phi"
    assert len(v.lineage["code_revision"]) == 64 and v.flavor == "sklearn" and "accuracy" in v.metrics
    assert v.card["conversion_check"]["max_abs_diff"] < 1e-4 and v.card["profile"]["rows"] == 341
    # the pipeline declared the gate its model must pass to reach production
    from archipel.errors import PolicyViolation
    from archipel.services.models import promote

    with pytest.raises(PolicyViolation, match=r"accuracy >= 0.99"):
        promote(ws, engine, "malignancy", v.version)
    assert two.attempts == [] and all(s["state"] == "SUCCEEDED" for s in two.steps)
    assert two.steps[1]["outputs"] == one.steps[1]["outputs"]


SLOW = """
name: slow
run: python train.py
inputs: [patients-eu]
outputs: {model: {kind: artifact}}
envs: {TRAIN_STEPS: "400", STEP_SECONDS: "0.05"}
resources: {cpus: 1, memory: 1GiB, spot: false}
checkpoint: 0.3s
"""


class Ticker:
    """A reconciler ticking every 0.1 s on a thread of its own, as `archipel server` runs it; pausable."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler, self._stop, self._thread = reconciler, threading.Event(), None
        self.start()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.reconciler.tick()
            time.sleep(0.1)

    def pause(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        self.pause()
        self.reconciler.close()


def _wait(predicate: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_dead_site_moves_the_run_to_an_allowed_site_and_never_to_a_forbidden_one(
    runs_ws: tuple[Any, Any], tmp_path: Path
) -> None:
    ws, engine = runs_ws
    from archipel.services.data import replicate_dataset

    replicate_dataset(ws, engine, "patients-eu", "gcp-europe-west4")  # the data survives one site's loss
    run_id = submit(ws, engine, write_job(tmp_path / "j", SLOW))
    ticker = Ticker(Reconciler(ws, engine))
    try:
        # the plan's choice runs, checkpoints, and a copy of its checkpoint reaches a fallback site
        _wait(
            lambda: (c := get_run(engine, run_id).steps[0]["checkpoint"]) is not None and len(c["sites"]) > 1
        )
        first_site = get_run(engine, run_id).steps[0]["site"]
        kill_site(ws, engine, first_site, storage=True)
        _wait(
            lambda: len(get_run(engine, run_id).attempts) >= 2 and get_run(engine, run_id).state == "RUNNING"
        )
        second = get_run(engine, run_id)
        moved_to = second.attempts[-1]["site"]
        assert moved_to != first_site and moved_to in ("onprem-frankfurt", "gcp-europe-west4")
        assert "resumed from checkpoint" in second.steps[0]["message"]
        # now the last allowed site dies too: only aws-us-east-1 (US) is left, which the policy forbids
        kill_site(ws, engine, moved_to)
        _wait(lambda: "waiting" in get_run(engine, run_id).steps[0]["message"])
        time.sleep(1.0)
        stuck = get_run(engine, run_id)
        assert stuck.state == "RECOVERING"
        assert all(a["site"] != "aws-us-east-1" for a in stuck.attempts)
        assert "aws-us-east-1: default-personal-data-residency" in stuck.steps[0]["message"]
        cancel_run(ws, engine, run_id)
        _wait(lambda: get_run(engine, run_id).state == "CANCELLED")
    finally:
        ticker.close()
        for site in ("onprem-frankfurt", "gcp-europe-west4"):
            revive_site(ws, engine, site)


def test_a_site_dying_before_its_newest_checkpoint_was_copied_resumes_from_the_one_before(
    runs_ws: tuple[Any, Any], tmp_path: Path
) -> None:
    """The newest checkpoints exist only at the site that dies (written since the last copy left): recovery takes
    the newest one held elsewhere, redoing a few steps, instead of waiting for the dead site; audited."""
    from archipel.policy.audit import AuditLog
    from archipel.services.data import replicate_dataset

    ws, engine = runs_ws
    replicate_dataset(ws, engine, "patients-eu", "gcp-europe-west4")
    run_id = submit(ws, engine, write_job(tmp_path / "j", SLOW))
    ticker = Ticker(Reconciler(ws, engine))
    try:
        _wait(
            lambda: (c := get_run(engine, run_id).steps[0]["checkpoint"]) is not None and len(c["sites"]) > 1
        )
        ticker.pause()  # nobody reads the job's events now: its next checkpoints stay at its site alone
        first_site = get_run(engine, run_id).steps[0]["site"]
        time.sleep(1.2)  # four more checkpoint intervals
        kill_site(ws, engine, first_site, storage=True)
        ticker.start()
        _wait(
            lambda: len(get_run(engine, run_id).attempts) >= 2 and get_run(engine, run_id).state == "RUNNING"
        )
        view = get_run(engine, run_id)
        fallback = AuditLog(engine, ws.state_dir).entries(action="run.checkpoint_fallback")
        assert len(fallback) == 1, [e.reason for e in fallback]
        used, newest = fallback[0].details["used"], fallback[0].details["newest"]
        assert used < newest and f"held only at {first_site}" in fallback[0].reason
        assert view.attempts[-1]["site"] != first_site
        assert f"resumed from checkpoint {used} " in view.steps[0]["message"]
        assert view.steps[0]["checkpoint"]["seq"] >= used  # the new attempt goes on from there
        cancel_run(ws, engine, run_id)
        _wait(lambda: get_run(engine, run_id).state == "CANCELLED")
    finally:
        ticker.close()
        revive_site(ws, engine, "onprem-frankfurt")
        revive_site(ws, engine, "gcp-europe-west4")
