"""The transfer benchmark runs in its quick smoke mode and every run it reports verified its sha256."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "transfer.py"


@pytest.mark.s3
@pytest.mark.slow
def test_transfer_benchmark_smoke() -> None:
    pytest.importorskip(
        "moto.server", reason="the benchmark starts moto's S3 server (pip install 'moto[server]')"
    )
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--size-mib", "16", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["size_mib"] == 16 and result["all_verified"] is True
    runs = result["runs"]
    assert {(r["route"], r["method"], r["streams"]) for r in runs} == {
        ("local->local", "shutil.copyfile", 1),
        ("local->local", "engine", 1),
        ("local->local", "engine", 4),
        ("local->local", "engine", 8),
        ("local->s3", "store.put", 1),
        ("local->s3", "engine", 1),
        ("local->s3", "engine", 4),
        ("local->s3", "engine", 8),
    }
    for run in runs:
        assert run["sha256_ok"] is True, run
        assert run["seconds"] > 0 and run["mb_per_s"] > 0 and run["ratio"] > 0
    assert all(r["ratio"] == 1.0 for r in runs if r["method"] != "engine")  # baselines are the reference
