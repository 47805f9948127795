"""The demo's execution step: the training pipeline runs where it was planned, its worker is killed once, and
the run resumes from its last checkpoint with the same run id."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from sqlalchemy import Engine

from archipel.cli import render_runs
from archipel.cli.demo_plan import DEMO_PIPELINE
from archipel.cost.ledger import entries
from archipel.db.engine import session_scope
from archipel.errors import NotFound
from archipel.executor.channel import read_context
from archipel.models.job import PipelineSpec
from archipel.services.plan import make_plan
from archipel.services.reconciler import POLL_S, Reconciler
from archipel.services.runs import get_run, submit_run
from archipel.workspace import Workspace

__all__ = ["DEMO_RUN", "examples_folder", "run_step"]

STEPS, FAST_STEPS, PAUSE, INTERVAL = 150, 80, 0.02, 0.5
SCRIPTS = ("prepare.py", "train.py")


def _paced(steps: int) -> PipelineSpec:
    """The planned pipeline with its training paced (``steps`` of ``PAUSE`` s) and checkpointed every ``INTERVAL``."""
    pipeline = DEMO_PIPELINE.model_dump(mode="json")
    train = {**pipeline["steps"]["train"], "envs": {"TRAIN_STEPS": str(steps), "STEP_SECONDS": str(PAUSE)},
             "checkpoint": f"{INTERVAL}s"}  # fmt: skip
    return PipelineSpec.model_validate({**pipeline, "steps": {**pipeline["steps"], "train": train}})


DEMO_RUN = _paced(STEPS)


def examples_folder() -> Path:
    """The example scripts the demo runs (the repository's ``examples`` folder)."""
    folder = Path(__file__).resolve().parents[3] / "examples"
    if not all((folder / name).is_file() for name in SCRIPTS):
        raise NotFound(
            f"the demo's training scripts are not in {folder}; run the demo from a source checkout"
        )
    return folder


def run_step(
    workspace: Workspace, engine: Engine, out: Console, *, fast: bool = False
) -> tuple[dict[str, Any], dict[str, bool]]:
    steps = FAST_STEPS if fast else STEPS
    spec = _paced(steps)
    jobs = workspace.root / "jobs"
    jobs.mkdir(exist_ok=True)
    for name in SCRIPTS:
        (jobs / name).write_text((examples_folder() / name).read_text())
    run_id = submit_run(workspace, engine, make_plan(workspace, engine, spec), workdir=jobs)
    reconciler = Reconciler(workspace, engine)
    killed_at: int | None = None
    checkpoint_at: int | None = None
    seen: dict[str, str] = {}
    progress = Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=out)
    trained = progress.add_task("train steps reported", total=steps)
    try:
        with progress:
            while (state := reconciler.state_of(run_id)) not in ("SUCCEEDED", "FAILED", "CANCELLED"):
                reconciler.tick()
                view = get_run(engine, run_id)
                for step in view.steps:
                    line = f"{step['state']} {step['message']}"
                    if seen.get(step["step"]) != line:
                        seen[step["step"]] = line
                        render_runs.step_change(step, out)
                train = next(s for s in view.steps if s["step"] == "train")
                attempt = next((a for a in reversed(view.attempts) if a["step"] == "train"), None)
                logged = [m["at_step"] for m in view.metrics if m["key"] == "train_accuracy"]
                progress.update(trained, completed=max(logged, default=-1) + 1)
                if (
                    killed_at is None
                    and attempt
                    and train["checkpoint"]
                    and logged
                    and max(logged) >= steps // 2
                ):
                    status = workspace.compute(attempt["site"]).status(attempt["job_id"])
                    if status.pid is not None and not status.state.terminal:
                        os.killpg(status.pid, signal.SIGKILL)
                        killed_at = max(logged)
                        out.print(
                            f"[red]Killed[/] the train worker (SIGKILL) after step {killed_at} was reported"
                        )
                time.sleep(POLL_S)
    finally:
        reconciler.close()
    view = get_run(engine, run_id)
    render_runs.show(view)
    train = next(s for s in view.steps if s["step"] == "train")
    attempts = [a for a in view.attempts if a["step"] == "train"]
    first = [m["at_step"] for m in view.metrics if m["key"] == "train_accuracy" and m["attempt"] == 1]
    second = [m["at_step"] for m in view.metrics if m["key"] == "train_accuracy" and m["attempt"] == 2]
    killed_at = max(first) if killed_at is not None and first else killed_at  # the last step attempt 1 logged
    resumed_at = min(second) if second else None
    if len(attempts) > 1:  # the checkpoint the control plane handed attempt 2
        resume = read_context(workspace.state_dir / "runs" / run_id / "train" / "attempt-2").get(
            "checkpoint", {}
        )
        checkpoint_at = (resume.get("resume") or {}).get("step")
    with session_scope(engine) as session:
        ledger = [e for e in entries(session) if e.run_id == run_id]
    compute_usd = sum(e.amount_usd for e in ledger if e.kind == "compute")
    egress_usd = sum(e.amount_usd for e in ledger if e.kind == "egress")
    lost = None if killed_at is None or resumed_at is None else killed_at + 1 - resumed_at
    out.print(
        f"Run [bold]{run_id}[/] {state}: the worker was killed at step {killed_at} and attempt 2 resumed at step "
        f"{resumed_at} from the checkpoint of step {checkpoint_at} ({lost} steps redone, the interval is "
        f"{INTERVAL:g} s ≈ {INTERVAL / PAUSE:.0f} steps); compute ${compute_usd:.6f}, egress ${egress_usd:.6f} "
        f"in the ledger; model sha256 {train['outputs'].get('model', {}).get('sha256', '-')[:16]}…"
    )
    summary = {
        "run_id": run_id,
        "state": state,
        "sites": {s["step"]: s["site"] for s in view.steps},
        "killed_at_step": killed_at,
        "checkpoint_step": checkpoint_at,
        "resumed_at_step": resumed_at,
        "recoveries": train["recoveries"],
        "attempts": len(attempts),
        "model_sha256": train["outputs"].get("model", {}).get("sha256"),
        "compute_usd": round(compute_usd, 9),
        "egress_usd": round(egress_usd, 9),
    }
    checks = {
        "run_succeeded": state == "SUCCEEDED",
        "worker_killed_once": killed_at is not None and train["recoveries"] == 1 and len(attempts) == 2,
        "resumed_from_checkpoint": resumed_at is not None and resumed_at == checkpoint_at and resumed_at > 0,
        "lost_at_most_one_interval": lost is not None and 0 <= lost <= INTERVAL / PAUSE + 2,
    }
    return summary, checks
