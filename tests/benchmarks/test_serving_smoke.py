"""The serving benchmark runs in its quick smoke mode: every server answers 200 with ONNX Runtime's outputs, and
its figures are present, positive and consistent with one another (no timing is held against a target); the
gateway part measures the direct, nginx (when installed) and gateway paths, and the full run refuses to start
without nginx."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"
HTTP_SERVERS = {"archipel", "fastapi+ort", "archipel wait=2", "archipel batch=1"}
MAX_BATCH = {
    "archipel": 64,
    "archipel wait=2": 64,
    "archipel batch=1": 1,
    "mlp batch=32": 32,
    "mlp batch=1": 1,
}


def _check_row(row: dict) -> None:
    assert row["requests"] > 0 and row["errors"] == 0 and row["seconds"] > 0, row
    assert row["req_per_s"] == pytest.approx(row["requests"] / row["seconds"], rel=0.01), row
    assert 0 < row["p50_ms"] <= row["p99_ms"], row
    assert row["server_cpu_us_per_req"] > 0 and row["server_cpu_pct"] > 0, row
    # both come from the same CPU seconds: per request x request rate = share of the run
    share = row["server_cpu_us_per_req"] * row["req_per_s"] / 1e4
    assert share == pytest.approx(row["server_cpu_pct"], rel=0.02, abs=0.2), row
    assert row["server_runq_pct"] >= 0 and row["client_cpu_pct"] > 0, row
    if row["server"] == "fastapi+ort":
        assert "batch_rows_mean" not in row, row
        return
    assert 1 <= row["batch_rows_mean"] <= min(MAX_BATCH[row["server"]], row["concurrency"]), row
    assert 0 < row["model_us_per_req"] < row["server_cpu_us_per_req"] * 1.05, row
    expected = row["server_cpu_us_per_req"] - row["model_us_per_req"]
    assert row["other_us_per_req"] == pytest.approx(expected, abs=0.02), row


def _check_gateway(gateway: dict, max_rate: float, seconds: float) -> None:
    """Open loop at half the server's req/s, capped at 200 req/s with --quick; nginx's row only if installed."""
    nginx = shutil.which("nginx") is not None
    assert gateway["max_req_per_s"] == max_rate and gateway["rate_req_per_s"] == round(min(max_rate / 2, 200))
    assert gateway["latency_from"] == "scheduled send time" and gateway["connections"] > 0
    assert (gateway["nginx"] == "not installed (make bench installs it)") is not nginx
    by = {row["path"]: row for row in gateway["rows"]}
    assert list(by) == (["direct", "relay", "nginx", "gateway"] if nginx else ["direct", "relay", "gateway"])
    for row in gateway["rows"]:
        assert row["rate_req_per_s"] == gateway["rate_req_per_s"], row
        # every request scheduled in the window answered 200 (the quick rate is far below any path's capacity)
        assert row["requests"] == pytest.approx(row["rate_req_per_s"] * seconds, abs=1), row
        assert row["errors"] == row["non_200"] == row["unfinished"] == 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["lag_p99_ms"] >= 0, row
        assert row["req_per_s"] > 0 and row["seconds"] > 0, row
        processes = ["replica"] if row["path"] == "direct" else ["replica", "proxy"]
        assert {k.split("_cpu_")[0] for k in row if "_cpu_" in k} == set(processes), row
        for name in processes:  # both from the same CPU seconds, as in _check_row
            share = row[f"{name}_cpu_us_per_req"] * row["req_per_s"] / 1e4
            assert share == pytest.approx(row[f"{name}_cpu_pct"], rel=0.02, abs=0.2), row
        assert row["replica_cpu_us_per_req"] > 0, row
    direct, through = by["direct"], by["gateway"]
    added = gateway["added_p50_ms"]
    assert set(added) == set(by) - {"direct"}
    for path, ms in added.items():
        assert ms == pytest.approx(by[path]["p50_ms"] - direct["p50_ms"], abs=1e-3)
    fast = added["gateway"] <= 1.0 and through["errors"] == 0
    assert gateway["targets"]["gateway_added_p50"] == ("MET" if fast else "MISSED")
    assert through["proxy_cpu_us_per_req"] > 0  # nginx may stay under one clock tick at the quick rate
    cheap = gateway["targets"]["gateway_cpu_below_nginx"]
    if nginx:
        expected = through["proxy_cpu_us_per_req"] < by["nginx"]["proxy_cpu_us_per_req"]
        assert cheap == ("MET" if expected else "MISSED")
    else:
        assert cheap == "not measured"


def test_the_full_run_needs_nginx() -> None:
    """Without nginx on PATH the full run stops at once, with the hint; --quick would skip only nginx's row."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "nginx: not installed (make bench installs it)" in proc.stderr and proc.stdout == ""


@pytest.mark.slow
def test_serving_benchmark_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["quick"] is True and result["duration_s"] == 1.0 and result["predictions_ok"] is True
    assert result["cpus"] >= 1 and result["load_before"] >= 0 and result["load_after"] >= 0

    http = {(r["server"], r["concurrency"]): r for r in result["http"]}
    _check_gateway(result["gateway"], http["archipel", 32]["req_per_s"], result["duration_s"])
    assert set(http) == {(server, c) for server in HTTP_SERVERS for c in (1, 8, 32)}
    for row in result["http"]:
        _check_row(row)
    for ratio in result["ratios"]:
        mine, base = http["archipel", ratio["concurrency"]], http["fastapi+ort", ratio["concurrency"]]
        assert ratio["req_per_s"] == pytest.approx(mine["req_per_s"] / base["req_per_s"], abs=0.01)
        assert ratio["p99"] == pytest.approx(mine["p99_ms"] / base["p99_ms"], abs=0.01)
    assert [r["concurrency"] for r in result["ratios"]] == [1, 8, 32]
    limit = result["in_process"]
    assert limit["rows"] == 1 and limit["calls"] > 0 and 0 < limit["p50_ms"] <= limit["p99_ms"]
    assert limit["req_per_s"] > 0 and limit["cpu_us"] > 0

    batching = result["batching"]
    batched, alone = batching["rows"]
    assert (batched["server"], alone["server"]) == ("mlp batch=32", "mlp batch=1")
    assert batched["concurrency"] == alone["concurrency"] == 32
    for row in batching["rows"]:
        _check_row(row)
    assert alone["batch_rows_mean"] == 1.0
    assert batching["ratio"] == pytest.approx(batched["req_per_s"] / alone["req_per_s"], abs=0.01)
    one, many = batching["in_process"]
    assert (one["rows"], many["rows"]) == (1, 32) and one["p50_ms"] > 0 and many["p50_ms"] > 0
    be = batching["break_even"]
    assert be["h1_us"] == http["archipel batch=1", 32]["other_us_per_req"]
    assert be["q_us"] == pytest.approx(http["archipel", 32]["other_us_per_req"] - be["h1_us"], abs=0.02)
    assert be["r"] == pytest.approx(batched["model_us_per_req"] / alone["model_us_per_req"], abs=1e-3)
    if be["r"] < 1:
        assert be["break_even_model_us"] == pytest.approx(
            max(be["q_us"], 0) / (1 - be["r"]), rel=0.01, abs=0.1
        )
    assert "m > q / (1 - r)" in be["formula"]

    cold = result["cold_start"]
    assert cold["rounds"] == 1 and 0 < cold["archipel_listening_s"] < cold["archipel_first_prediction_s"]
    assert cold["import_onnxruntime_s"] > 0
    expected = cold["archipel_first_prediction_s"] / cold["import_onnxruntime_s"]
    assert cold["ratio"] == pytest.approx(expected, rel=0.01, abs=0.01)
