"""The executor benchmark runs in its quick smoke mode: every job succeeds, every load returns what was saved,
and its figures are consistent with one another (no timing is asserted)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "executor.py"
BASELINES = {'subprocess.run(["true"])', "write+flush+fsync", "read+np.frombuffer"}


def test_executor_benchmark_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["quick"] is True and result["jobs_succeeded"] is True and result["loads_verified"] is True
    assert (result["launches"], result["checkpoint_rounds"], result["size_mb"]) == (3, 1, 8)
    assert 8_000_000 < result["checkpoint_bytes"] < 8_000_000 + 4096  # the array plus zip and npy headers
    assert result["ray"]["ran"] is False and "skipped" in result["ray"]["note"]
    assert result["cpus"] >= 1 and result["load_before"] >= 0

    runs = {(r["case"], r["method"]): r for r in result["runs"]}
    assert set(runs) == {
        ("launch-local", 'subprocess.run(["true"])'),
        ("launch-local", "launch"),
        ("launch-local", "launch+wait"),
        ("checkpoint-save", "write+flush+fsync"),
        ("checkpoint-save", "encode_state+put(sha256)"),
        ("checkpoint-save", "save:encode_state"),
        ("checkpoint-save", "save:put+sha256"),
        ("checkpoint-load", "read+np.frombuffer"),
        ("checkpoint-load", "get+sha256+decode_state"),
        ("checkpoint-load", "load:get"),
        ("checkpoint-load", "load:sha256"),
        ("checkpoint-load", "load:decode_state"),
    }
    bare = {r["case"]: r["seconds"] for r in result["runs"] if r["method"] in BASELINES}
    for (case, method), row in runs.items():
        expected_runs = result["launches"] if case.startswith("launch") else result["checkpoint_rounds"]
        assert len(row["all_seconds"]) == expected_runs, row
        assert all(s > 0 for s in row["all_seconds"]), row
        assert row["seconds"] == pytest.approx(statistics.median(row["all_seconds"]), abs=1e-6), row
        if method in BASELINES:
            assert row["ratio"] == 1.0, row
        else:
            assert row["ratio"] == pytest.approx(row["seconds"] / bare[case], rel=0.01, abs=0.01), row
        whole = method in BASELINES or method in ("encode_state+put(sha256)", "get+sha256+decode_state")
        if case.startswith("checkpoint") and whole:
            assert row["mb_per_s"] == pytest.approx(8e6 / row["seconds"] / 1e6, rel=0.01, abs=0.1), row
        else:
            assert row["mb_per_s"] is None, row

    # launch+wait is timed from the same start as launch, so it can never be shorter
    launch, waited = runs[("launch-local", "launch")], runs[("launch-local", "launch+wait")]
    assert all(w >= s for s, w in zip(launch["all_seconds"], waited["all_seconds"], strict=True))
    # each part of the archipel path is timed inside the whole
    for op, whole, count in (("save", "encode_state+put(sha256)", 2), ("load", "get+sha256+decode_state", 3)):
        total = runs[(f"checkpoint-{op}", whole)]["all_seconds"][0]
        parts = [r["all_seconds"][0] for (c, m), r in runs.items() if m.startswith(f"{op}:")]
        assert len(parts) == count and sum(parts) <= total + 1e-5
