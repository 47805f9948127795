"""Recovery: a checkpointed training job killed at random points resumes from its last checkpoint, with the
same run id, and ends with the model an uninterrupted run makes, bit for bit."""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

from archipel.services.reconciler import Reconciler
from archipel.services.runs import get_run
from tests.executor.conftest import submit, write_job

STEPS, PAUSE, INTERVAL = 50, 0.04, 0.3
JOB = f"""
name: sgd
run: python train.py
inputs: [patients-eu]
outputs: {{model: {{kind: artifact}}}}
envs: {{TRAIN_STEPS: "{STEPS}", STEP_SECONDS: "{PAUSE}"}}
resources: {{cpus: 1, memory: 1GiB, spot: false}}
constraints: {{sites: [onprem-frankfurt]}}
checkpoint: {INTERVAL}s
retries: 0
"""


def _drive(ws: Any, engine: Any, run_id: str, kills: int, seed: int) -> list[tuple[int, float]]:
    """Drive the run; meanwhile SIGKILL its worker ``kills`` times at random points (after it logged a step)."""
    reconciler = Reconciler(ws, engine)
    done = threading.Event()
    killed: list[tuple[int, float]] = []

    def killer() -> None:
        rng = random.Random(seed)
        while len(killed) < kills and not done.is_set():
            view = get_run(engine, run_id)
            attempts = view.attempts
            if not attempts or attempts[-1]["state"] != "RUNNING" or attempts[-1]["number"] <= len(killed):
                time.sleep(0.02)
                continue
            current = attempts[-1]
            logged = [
                m for m in view.metrics if m["attempt"] == current["number"] and m["key"] == "train_accuracy"
            ]
            if not logged:
                time.sleep(0.02)
                continue
            time.sleep(rng.uniform(0.05, 0.6))
            status = ws.compute(current["site"]).status(current["job_id"])
            if status.pid is None or status.state.terminal:
                continue
            os.killpg(status.pid, signal.SIGKILL)
            killed.append((current["number"], time.monotonic()))

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        state = reconciler.drive(run_id, timeout_s=240)
    finally:
        done.set()
        thread.join()
        reconciler.close()
    assert state == "SUCCEEDED", get_run(engine, run_id).steps
    return killed


def test_five_kills_lose_at_most_one_interval_each_and_the_model_is_bit_identical(
    runs_ws: tuple[Any, Any], tmp_path: Path
) -> None:
    ws, engine = runs_ws
    spec = write_job(tmp_path / "job", JOB)
    baseline = submit(ws, engine, spec)
    _drive(ws, engine, baseline, kills=0, seed=0)
    clean = get_run(engine, baseline)

    run_id = submit(ws, engine, spec, reuse=False)  # the same spec and code: it would be served from cache
    killed = _drive(ws, engine, run_id, kills=5, seed=7)
    view = get_run(engine, run_id)
    assert len(killed) == 5 and view.id == run_id and view.state == "SUCCEEDED"
    step = view.steps[0]
    assert step["recoveries"] == 5 and step["failures"] == 0
    assert [a["number"] for a in view.attempts] == [1, 2, 3, 4, 5, 6]
    assert all("signal 9" in a["exit_reason"] for a in view.attempts[:5])
    # the same bytes as the uninterrupted run: same sha256 of the model output
    assert step["outputs"]["model"]["sha256"] == clean.steps[0]["outputs"]["model"]["sha256"]
    # work lost per kill: steps the killed attempt logged beyond where the next one resumed
    per_interval = math.ceil(INTERVAL / PAUSE) + 1
    steps_of = {
        n: sorted(m["at_step"] for m in view.metrics if m["attempt"] == n and m["key"] == "train_accuracy")
        for n in range(1, 7)
    }
    resumed_from_checkpoint = 0
    for n in range(1, 6):
        lost = steps_of[n][-1] + 1 - steps_of[n + 1][0]
        assert 0 <= lost <= per_interval, (n, steps_of[n][-1], steps_of[n + 1][0])
        resumed_from_checkpoint += steps_of[n + 1][0] > 0
    assert resumed_from_checkpoint >= 3  # most kills came after a checkpoint: resumption really happened
    assert steps_of[6][-1] == STEPS - 1
    # the ledger holds one compute entry per attempt, for this run
    from archipel.cost.ledger import entries
    from archipel.db.engine import session_scope

    with session_scope(engine) as session:
        compute = [e for e in entries(session) if e.kind == "compute" and e.run_id == run_id]
    assert len(compute) == 6
