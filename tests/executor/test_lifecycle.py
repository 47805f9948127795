"""The run life cycle's other paths: user errors retried, setup once per site, budgets at launch, a hung worker,
NoCapacity falling through to the next candidate, cancellation."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from archipel.backends.compute.base import LaunchRequest, Resources
from archipel.db.engine import session_scope
from archipel.policy.audit import AuditLog
from archipel.services.reconciler import Reconciler
from archipel.services.runs import cancel_run, get_run
from archipel.workspace import load_workspace
from tests.executor.conftest import submit, write_job


def _drive(ws: Any, engine: Any, run_id: str, **kwargs: Any) -> str:
    reconciler = Reconciler(ws, engine, **kwargs)
    try:
        return reconciler.drive(run_id, timeout_s=120)
    finally:
        reconciler.close()


def test_a_failing_command_is_retried_with_backoff_then_fails(
    runs_ws: tuple[Any, Any], tmp_path: Path
) -> None:
    ws, engine = runs_ws
    spec = write_job(tmp_path / "j", "name: broken\nrun: echo boom; exit 3\nretries: 1\n", scripts=())
    run_id = submit(ws, engine, spec)
    started = time.monotonic()
    assert _drive(ws, engine, run_id) == "FAILED"
    view = get_run(engine, run_id)
    assert [a["exit_code"] for a in view.attempts] == [3, 3]
    assert view.steps[0]["failures"] == 2 and view.steps[0]["recoveries"] == 0
    assert "exit code 3; 1 retries used" in view.steps[0]["message"]
    assert time.monotonic() - started >= 1.0  # the retry waited its backoff (1 s)


def test_setup_runs_once_per_site_and_content(runs_ws: tuple[Any, Any], tmp_path: Path) -> None:
    ws, engine = runs_ws
    counter = tmp_path / "setups.log"
    spec = write_job(
        tmp_path / "j",
        f"""
        name: with-setup
        run: echo ran
        setup: echo installed >> {counter}
        constraints: {{sites: [onprem-frankfurt]}}
        """,
        scripts=(),
    )
    for _ in range(2):
        assert _drive(ws, engine, submit(ws, engine, spec, reuse=False)) == "SUCCEEDED"
    assert counter.read_text().splitlines() == ["installed"]


def _with_budget(ws: Any, enforcement: str) -> Any:
    text = ws.file.read_text()
    text += "budgets:\n  research:\n    amount_usd: 1.0\n    tags: {team: research}\n"
    text += f"    enforcement: {enforcement}\n"
    ws.file.write_text(text)
    return load_workspace(ws.root)


@pytest.mark.parametrize("enforcement", ["hard", "soft"])
def test_budgets_are_checked_at_launch(runs_ws: tuple[Any, Any], tmp_path: Path, enforcement: str) -> None:
    from archipel.cost.ledger import add_entry

    ws, engine = runs_ws
    ws = _with_budget(ws, enforcement)
    spec = write_job(tmp_path / "j", "name: spend\nrun: echo ok\ntags: {team: research}\n", scripts=())
    run_id = submit(ws, engine, spec)  # planned while the budget still had room
    with session_scope(engine) as session:  # then someone spent it
        add_entry(session, kind="compute", site="aws-us-east-1", provider="aws", quantity=1.0, unit="h",
            unit_price_usd=0.999999, tags={"team": "research"})  # fmt: skip
    state = _drive(ws, engine, run_id)
    view = get_run(engine, run_id)
    checks = [e for e in AuditLog(engine, ws.state_dir).entries() if e.action == "budget.check"]
    assert checks and checks[-1].rule == "research"
    if enforcement == "hard":
        assert state == "FAILED" and view.attempts == []
        assert view.steps[0]["message"].startswith("refused by hard budget research")
        assert checks[-1].outcome == "refused"
    else:
        assert state == "SUCCEEDED" and len(view.attempts) == 1
        assert checks[-1].outcome == "allowed"


def test_a_hung_worker_is_declared_lost_by_its_heartbeat_and_recovered(
    runs_ws: tuple[Any, Any], tmp_path: Path
) -> None:
    ws, engine = runs_ws
    spec = write_job(
        tmp_path / "j",
        """
        name: hang
        run: python train.py
        inputs: [patients-eu]
        outputs: {model: {kind: artifact}}
        envs: {TRAIN_STEPS: "60", STEP_SECONDS: "0.05"}
        resources: {cpus: 1, memory: 1GiB, spot: false}
        constraints: {sites: [onprem-frankfurt]}
        checkpoint: 0.5s
        """,
    )
    run_id = submit(ws, engine, spec)
    reconciler = Reconciler(
        ws, engine, heartbeat_timeout_s=3.0
    )  # heartbeats every 1 s; slack for a loaded CI box
    stopped = False
    try:
        deadline = time.monotonic() + 120
        while (state := reconciler.state_of(run_id)) not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            assert time.monotonic() < deadline
            reconciler.tick()
            view = get_run(engine, run_id)
            if not stopped and view.metrics and view.attempts and view.attempts[-1]["state"] == "RUNNING":
                pid = ws.compute("onprem-frankfurt").status(view.attempts[-1]["job_id"]).pid
                assert pid is not None
                os.killpg(pid, signal.SIGSTOP)  # alive but silent: no exit, no heartbeat
                stopped = True
            time.sleep(0.1)
    finally:
        reconciler.close()
    view = get_run(engine, run_id)
    assert state == "SUCCEEDED" and stopped
    assert view.attempts[0]["exit_reason"].startswith("no heartbeat for")
    assert view.steps[0]["recoveries"] == 1


def test_no_capacity_at_the_chosen_site_falls_through_to_the_next_candidate(
    runs_ws: tuple[Any, Any], tmp_path: Path
) -> None:
    ws, engine = runs_ws
    spec = write_job(
        tmp_path / "j", "name: tiny\nrun: echo ok\nresources: {cpus: 1, memory: 1GiB}\n", scripts=()
    )
    from archipel.services.plan import load_plan_spec, make_plan

    chosen = make_plan(ws, engine, load_plan_spec(spec)).plan.placements[0].chosen.site
    compute = ws.compute(chosen)
    blocker = compute.launch(
        LaunchRequest("sleep 60", resources=Resources(cpus=ws.site(chosen).capacity.cpus))
    )
    try:
        run_id = submit(ws, engine, spec)
        assert _drive(ws, engine, run_id) == "SUCCEEDED"
        site = get_run(engine, run_id).attempts[0]["site"]
        assert site != chosen
    finally:
        compute.cancel(blocker, grace_s=0)


def test_cancelling_a_run_stops_its_job(runs_ws: tuple[Any, Any], tmp_path: Path) -> None:
    ws, engine = runs_ws
    spec = write_job(tmp_path / "j", "name: long\nrun: sleep 60\n", scripts=())
    run_id = submit(ws, engine, spec)
    reconciler = Reconciler(ws, engine)
    try:
        while not get_run(engine, run_id).attempts:
            reconciler.tick()
            time.sleep(0.05)
        cancel_run(ws, engine, run_id)
        assert reconciler.drive(run_id, timeout_s=30) == "CANCELLED"
    finally:
        reconciler.close()
    attempt = get_run(engine, run_id).attempts[0]
    assert attempt["state"] == "CANCELLED"
    assert ws.compute(attempt["site"]).status(attempt["job_id"]).state == "CANCELLED"
