"""The monitoring benchmark in its quick smoke mode, without Evidently (it lives only in the benchmark's own venv):
archipel flags every feature built to drift and none built not to, and its figures hang together (no timing is
asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "monitoring.py"


def test_monitoring_benchmark_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--bench-venv", str(tmp_path / "no-venv")],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["quick"], result["rows"], result["features"], result["evidently"]) == (
        True,
        50_000,
        20,
        None,
    )
    assert result["design_ok"] is True and result["design_misses"] == []
    mine = result["archipel"]
    assert set(mine["columns"]) == set(result["design"]) and len(mine["seconds"]) == 1
    for name, column in mine["columns"].items():
        expected = result["design"][name]["expected"]
        if expected is not None:  # borderline features (None) may go either way
            assert column["drifted"] is expected, (name, column)
        assert (column["score"] >= column["threshold"]) == column["drifted"] or column["method"] in (
            "ks",
            "chisquare",
            "z",  # p-value tests: drifted below the threshold
        ), (name, column)
    drifted = sum(c["drifted"] for c in mine["columns"].values())
    assert mine["share_drifted"] == round(drifted / 20, 4) or abs(mine["share_drifted"] - drifted / 20) < 1e-9
