"""The planner benchmark runs in its quick smoke mode; archipel's plan is never beaten by greedy or a baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "planner.py"
MIP_GAP = 1e-4  # HiGHS's default relative MIP gap: the MILP is optimal to within this


def test_planner_benchmark_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout  # quick mode: no timing target, only cross-checks
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["quick"] is True and result["seed"] == 3
    assert result["crosscheck_ok"] is True  # the benchmark's cost evaluation reproduces Plan.total_usd

    head = result["headline"]
    assert (head["steps"], head["sites"]) == (10, 8) and len(result["sites"]) == 8
    assert {s["provider"] for s in result["sites"]} == {"aws", "gcp", "azure", "onprem"}
    assert head["x_binaries"] == head["options"] > 0 and head["variables"] > head["x_binaries"]
    assert head["milp_seconds_median"] > 0 and len(head["milp_seconds"]) == head["runs"]
    assert head["milp_usd"] > 0 and head["greedy_usd"] >= head["milp_usd"] * (1 - MIP_GAP)
    assert head["greedy_over_milp"] >= 1 - MIP_GAP
    assert head["target_applies"] is False and head["crosscheck_ok"] is True

    rows = result["scenarios"]
    assert len(rows) == 3 and len({r["shape"] for r in rows}) == 3
    for row in rows:
        ours = row["archipel_usd"]
        assert ours > 0 and row["crosscheck_ok"] is True, row
        assert abs(sum(row["archipel_breakdown"].values()) - ours) <= 1e-3, row
        assert row["milp_le_greedy"] is True and row["greedy_usd"] >= ours * (1 - MIP_GAP), row
        assert row["milp_le_cheapest_compute"] is True, row
        assert row["cheapest_compute_usd"] >= ours * (1 - MIP_GAP), row
        if row["one_provider_usd"] is None:  # no single provider offers every step's hardware
            assert row["one_provider"] is None and row["ratio_one_provider"] is None, row
            assert all(c is None for c in row["one_provider_by_provider"].values()), row
        else:
            assert row["milp_le_one_provider"] is True and row["one_provider_usd"] >= ours * (1 - MIP_GAP)
            feasible = [c for c in row["one_provider_by_provider"].values() if c is not None]
            assert row["one_provider_usd"] == min(feasible), row
        ratio = row["cheapest_compute_usd"] / ours  # both rounded to 0.0001 in the JSON
        assert abs(row["ratio_cheapest_compute"] - ratio) <= 1e-3 * ratio, row

    summary = result["summary"]
    for key in ("vs_greedy", "vs_cheapest_compute", "vs_one_provider"):
        s = summary[key]
        assert s["of"] + s["infeasible"] == len(rows) and 0 <= s["archipel_strictly_cheaper"] <= s["of"]
        if s["of"]:
            assert 1 - MIP_GAP <= s["min"] <= s["median"] <= s["max"], s
