"""``archipel run``, ``runs``, ``chaos`` and ``plan -o`` + ``run --plan`` through the CLI, in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import run


def _job(tmp_path: Path) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "step.py").write_text(
        "import archipel\n"
        "ctx = archipel.job.context()\n"
        "t = ctx.input('patients-eu')\n"
        "ctx.log_metric('rows', t.num_rows, step=1)\n"
        "print('rows', t.num_rows, 'at', ctx.site)\n"
    )
    (folder / "job.yaml").write_text("name: count\nrun: python step.py\ninputs: [patients-eu]\n")
    return folder / "job.yaml"


def test_run_then_runs_ls_show_logs(
    capsys: pytest.CaptureFixture[str], ws_with_data: Any, tmp_path: Path
) -> None:
    w = ["--workspace", str(ws_with_data.root)]
    code, out, err = run(capsys, *w, "run", str(_job(tmp_path)), "--yes", "--json")
    assert code == 0, err
    view = json.loads(out)
    assert view["state"] == "SUCCEEDED" and view["steps"][0]["site"] in (
        "onprem-frankfurt",
        "gcp-europe-west4",
    )
    # one value per attempt that got that far (a retried or recovered attempt logs again; seen once under heavy load)
    rows = [m["value"] for m in view["metrics"] if m["key"] == "rows"]
    attempts = view["attempts"]
    assert rows and set(rows) == {341.0} and len(rows) <= len(attempts), attempts
    assert attempts[-1]["state"] == "SUCCEEDED", attempts
    run_id = view["id"]
    code, out, _ = run(capsys, *w, "runs", "ls", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [run_id]
    code, out, _ = run(capsys, *w, "runs", "show", run_id[:12])  # a unique prefix is enough
    assert code == 0 and run_id in out and "SUCCEEDED" in out and "rows=341" in out
    code, out, _ = run(capsys, *w, "runs", "logs", run_id)
    assert code == 0 and "rows 341 at" in out
    code, _, err = run(capsys, *w, "runs", "cancel", run_id)
    assert code == 4 and "already ended" in err
    code, out, _ = run(capsys, *w, "cost", "--by", "run", "--json")
    assert code == 0 and run_id in {row["key"] for row in json.loads(out)["rows"]}


def test_a_saved_plan_runs_until_something_changes(
    capsys: pytest.CaptureFixture[str], ws_with_data: Any, tmp_path: Path
) -> None:
    w = ["--workspace", str(ws_with_data.root)]
    spec, saved = _job(tmp_path), tmp_path / "plan.json"
    assert run(capsys, *w, "plan", str(spec), "-o", str(saved))[0] == 0
    code, out, err = run(capsys, *w, "run", "--plan", str(saved), "--yes", "--json")
    assert code == 0, err
    chosen = json.loads(out)["steps"][0]["site"]
    assert run(capsys, *w, "chaos", "kill-site", chosen)[0] == 0
    code, _, err = run(capsys, *w, "run", "--plan", str(saved), "--yes")
    assert code == 4 and "the saved plan is stale" in err and f"{chosen} ->" in err
    assert run(capsys, *w, "chaos", "revive", chosen)[0] == 0


def test_run_errors_are_clear(capsys: pytest.CaptureFixture[str], ws_with_data: Any, tmp_path: Path) -> None:
    w = ["--workspace", str(ws_with_data.root)]
    code, _, err = run(capsys, *w, "run")
    assert code == 2 and "give a job or pipeline file" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrun: echo\nretires: 2\n")
    code, _, err = run(capsys, *w, "run", str(bad), "--yes")
    assert code == 2 and "bad.yaml:3" in err and "retries" in err
    code, _, err = run(capsys, *w, "runs", "show", "nope")
    assert code == 3 and "no run" in err


def test_detach_hands_the_run_to_a_background_server_that_exits_when_idle(
    capsys: pytest.CaptureFixture[str], ws_with_data: Any, tmp_path: Path
) -> None:
    import time

    from archipel.db import connect
    from archipel.executor.lease import holder_of
    from archipel.services.runs import get_run

    w = ["--workspace", str(ws_with_data.root)]
    code, out, err = run(capsys, *w, "run", str(_job(tmp_path)), "--yes", "--detach", "--json")
    assert code == 0, err
    submitted = json.loads(out)
    assert submitted["server_started"] is True
    engine = connect(ws_with_data.db_url)
    deadline = time.monotonic() + 60
    while get_run(engine, submitted["run_id"]).state != "SUCCEEDED":
        assert time.monotonic() < deadline, get_run(engine, submitted["run_id"]).steps
        time.sleep(0.2)
    assert (holder := holder_of(engine, "reconciler")) is not None and holder.startswith("server-")
    while holder_of(engine, "reconciler") is not None:  # idle for 2 s: it releases the lease and exits
        assert time.monotonic() < deadline + 30
        time.sleep(0.2)
    engine.dispose()


def test_only_the_lease_holder_reconciles(ws_with_data: Any) -> None:
    from archipel.db import connect
    from archipel.executor.lease import holder_of, release, try_acquire

    engine = connect(ws_with_data.db_url)
    assert try_acquire(engine, "reconciler", "a", ttl_s=30)
    assert not try_acquire(engine, "reconciler", "b", ttl_s=30)
    assert try_acquire(engine, "reconciler", "a", ttl_s=30)  # renewal
    release(engine, "reconciler", "a")
    assert holder_of(engine, "reconciler") is None and try_acquire(engine, "reconciler", "b", ttl_s=0.2)
    import time

    time.sleep(0.3)  # b stopped renewing: its lease expired
    assert try_acquire(engine, "reconciler", "a", ttl_s=30) and holder_of(engine, "reconciler") == "a"
    engine.dispose()
