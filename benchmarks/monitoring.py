"""Drift report: archipel's ``monitoring.drift`` against Evidently's DataDriftPreset on the same data.

A seeded reference of 100,000 rows and a current window of 1,000,000 rows, 20 features: 14 numeric (normal,
lognormal, uniform, exponential, bimodal, Student-t, beta, Poisson counts, a 4-valued and a 0/1 numeric, one with
5 % NaN) and 6 categorical (integer codes, one of strings). Some drift by design: clearly (a 0.5-std shift, a
25 % rescale of a lognormal, a Poisson mean moving by 0.4, a 20 % wider normal, category shares reshuffled, a new
category with 8 % of the rows), some near the threshold (shifts of 0.13 and 0.07 std, category shares nudged);
the rest do not. With default settings both tools pick the same tests here (more than 1000 rows on both sides:
the Wasserstein distance normed by the reference's std for numeric features, Jensen-Shannon for categorical ones
and for numeric ones with at most 5 values, threshold 0.1).

* archipel: ``reference_profile`` once beforehand (timed apart: it is computed at registration), then
  ``detect(reference, current columns)`` timed: that is ``current_profile`` (what a site computes) plus the
  tests; the tests alone, on the profile, are timed too.
* Evidently: ``Report([DataDriftPreset()], include_tests=True).run(...)`` on the same reference and current
  pandas DataFrames (``Dataset.from_pandas`` with the same numeric/categorical split, inside the timing), in a
  subprocess run by the Python of a separate venv (``.venv-bench``, see ``requirements-monitoring.txt``; the
  tables go there as Parquet files). A column's verdict is its ValueDrift test failing.

Each is timed ``--repeat`` times (best and median reported); the ratio is Evidently's median over archipel's.
Per feature: both tools' test, score and verdict, and whether the verdicts agree. Target: archipel >= 10x faster.
A design check holds archipel to the ground truth: every clearly drifted feature flagged, no undrifted one.

    python benchmarks/monitoring.py [--rows 1000000] [--repeat 3] [--quick] [--json] [--setup] [--out PATH]

``--quick`` (CI smoke mode): 50,000 current rows, one repetition, and Evidently only if its venv exists (else
archipel alone, said so). The full run needs the venv: ``--setup`` creates it (uv venv + uv pip install), else
it stops with exit code 2. Exit code 1 if the design check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from results import add_out_option, save

from archipel.monitoring.drift import current_profile, detect, reference_profile

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".venv-bench"
REQUIREMENTS = ROOT / "benchmarks" / "requirements-monitoring.txt"
REFERENCE_ROWS = 100_000
TARGET_RATIO = 10.0

Draw = Callable[[np.random.Generator, int, bool], np.ndarray]  # (rng, rows, current?) -> column


def _codes(p_ref: list[float], p_cur: list[float] | None = None) -> Draw:
    return lambda rng, n, cur: rng.choice(len(p_ref), n, p=np.array(p_cur if cur and p_cur else p_ref))


def _with_nan(rng: np.random.Generator, n: int, _: bool) -> np.ndarray:
    values = rng.normal(0.0, 1.0, n)
    values[rng.random(n) < 0.05] = np.nan
    return values


ZIPF = list(np.arange(1, 11) ** -1.0 / np.sum(np.arange(1, 11) ** -1.0))
FIVE = [0.3, 0.25, 0.2, 0.15, 0.1]
WORDS = np.array([f"city-{i:02d}" for i in range(20)])
# name: (kind, draw, design: True drifts clearly, False does not, None near the threshold; what changes)
FEATURES: dict[str, tuple[str, Draw, bool | None, str]] = {
    "n00_normal": ("num", lambda r, n, c: r.normal(0.5 if c else 0.0, 1.0, n), True, "shift 0.5 std"),
    "n01_normal": ("num", lambda r, n, c: r.normal(51.3 if c else 50.0, 10.0, n), None, "shift 0.13 std"),
    "n02_normal": ("num", lambda r, n, c: r.normal(0.07 if c else 0.0, 1.0, n), None, "shift 0.07 std"),
    "n03_lognormal": ("num", lambda r, n, c: r.lognormal(0.0, 0.8, n) * (1.25 if c else 1.0), True, "x1.25"),
    "n04_uniform": ("num", lambda r, n, c: r.uniform(0.0, 100.0, n), False, ""),
    "n05_exponential": ("num", lambda r, n, c: r.exponential(2.0, n), False, ""),
    "n06_bimodal": ("num", lambda r, n, c: r.normal(0.0, 1.0, n) + 4.0 * (r.random(n) < 0.3), False, ""),
    "n07_poisson": (
        "num",
        lambda r, n, c: r.poisson(4.4 if c else 4.0, n).astype(np.float64),
        True,
        "mean +0.4",
    ),
    "n08_four_values": (
        "num",
        lambda r, n, c: r.choice(4, n, p=[0.4, 0.3, 0.2, 0.1]).astype(np.float64),
        False,
        "",
    ),
    "n09_binary": ("num", lambda r, n, c: (r.random(n) < 0.2).astype(np.float64), False, ""),
    "n10_with_nan": ("num", _with_nan, False, "5% NaN"),
    "n11_student_t": ("num", lambda r, n, c: r.standard_t(3.0, n), False, ""),
    "n12_wider": ("num", lambda r, n, c: r.normal(0.0, 1.2 if c else 1.0, n), True, "std x1.2"),
    "n13_beta": ("num", lambda r, n, c: r.beta(2.0, 5.0, n), False, ""),
    "c0_reshuffled": ("cat", _codes(ZIPF, ZIPF[::-1]), True, "shares reversed"),
    "c1_nudged": ("cat", _codes(FIVE, [0.22, 0.25, 0.2, 0.18, 0.15]), None, "shares nudged"),
    "c2_strings": ("cat", lambda r, n, c: r.choice(WORDS, n), False, "20 strings"),
    "c3_fifty": ("cat", _codes([1 / 50] * 50), False, "50 codes"),
    "c4_binary": ("cat", _codes([0.7, 0.3]), False, ""),
    "c5_new_value": (
        "cat",
        _codes([0.3, 0.2, 0.2, 0.1, 0.1, 0.1, 0.0], [0.28, 0.18, 0.18, 0.1, 0.1, 0.08, 0.08]),
        True,
        "new code, 8%",
    ),
}
NUMERIC = [n for n, (kind, *_) in FEATURES.items() if kind == "num"]
CATEGORICAL = [n for n, (kind, *_) in FEATURES.items() if kind == "cat"]

EVIDENTLY = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import pandas as pd
import evidently
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

reference_path, current_path, numeric, categorical, repeat = sys.argv[1:]
numeric, categorical = json.loads(numeric), json.loads(categorical)
reference, current = pd.read_parquet(reference_path), pd.read_parquet(current_path)
definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
seconds = []
for _ in range(int(repeat)):
    start = time.perf_counter()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    seconds.append(time.perf_counter() - start)
result, columns = snapshot.dict(), {}
for metric in result["metrics"]:
    if metric["config"]["type"].endswith("ValueDrift"):
        config = metric["config"]
        columns[config["column"]] = {"method": config["method"], "threshold": config["threshold"],
                                     "score": metric["value"]}
for test in result["tests"]:
    params = test["metric_config"]["params"]
    if params["type"].endswith("ValueDrift"):
        columns[params["column"]]["drifted"] = test["status"] == "FAIL"
print(json.dumps({"version": evidently.__version__, "seconds": seconds, "columns": columns}))
"""
METHOD_NAMES = {  # Evidently's display names -> archipel's test names
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "PSI": "psi",
}


def make_data(seed: int, rows: int, current: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: draw(rng, rows, current) for name, (_, draw, _, _) in FEATURES.items()}


def setup_bench_venv(venv: Path) -> None:
    """Create the Evidently venv (or bring an existing one up to the requirements) with uv: the one beside this
    Python, else the one on PATH."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise SystemExit(
            "uv not found: pip install uv, or create the venv with the commands in " + str(REQUIREMENTS)
        )
    if not (venv / "bin" / "python").exists():
        subprocess.run([uv, "venv", "--python", "3.11", str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "--python", str(venv / "bin" / "python"), "-r", str(REQUIREMENTS)],
                   check=True)  # fmt: skip


def evidently_python(venv: Path) -> str | None:
    if importlib.util.find_spec("evidently") is not None:
        return sys.executable
    python = venv / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([python, "-c", "import evidently"], capture_output=True).returncode == 0
    ):
        return str(python)
    return None


def run_archipel(reference_data: dict, current_data: dict, repeat: int) -> dict[str, Any]:
    start = time.perf_counter()
    reference = reference_profile(reference_data, list(FEATURES), categorical=CATEGORICAL)
    profile_s = time.perf_counter() - start
    seconds, report = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        report = detect(reference, current_data)
        seconds.append(time.perf_counter() - start)
    assert report is not None
    profile = current_profile(current_data, reference)
    start = time.perf_counter()
    on_profile = detect(reference, profile)
    tests_s = time.perf_counter() - start
    assert on_profile.to_dict() == report.to_dict()
    return {
        "reference_profile_s": round(profile_s, 4),
        "reference_profile_kb": round(len(json.dumps(reference)) / 1000, 1),
        "current_profile_kb": round(len(json.dumps(profile)) / 1000, 1),
        "seconds": [round(s, 4) for s in seconds],
        "tests_only_s": round(tests_s, 4),
        "dataset_drift": report.dataset_drift,
        "share_drifted": report.share_drifted,
        "columns": {
            f.feature: {
                "method": f.test,
                "threshold": f.threshold,
                "score": f.score,
                "drifted": f.drifted,
                "psi": f.psi,
            }
            for f in report.features
        },
    }


def run_evidently(python: str, reference_data: dict, current_data: dict, repeat: int, work: Path) -> dict:
    paths = [work / "reference.parquet", work / "current.parquet"]
    for path, data in zip(paths, (reference_data, current_data), strict=True):
        pq.write_table(pa.table(data), path)
    argv = [
        python,
        "-c",
        EVIDENTLY,
        *map(str, paths),
        json.dumps(NUMERIC),
        json.dumps(CATEGORICAL),
        str(repeat),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"the Evidently run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for column in result["columns"].values():
        column["method"] = METHOD_NAMES.get(column["method"], column["method"])
    return result


def _timing(seconds: list[float]) -> dict[str, float]:
    return {"best_s": round(min(seconds), 4), "median_s": round(statistics.median(seconds), 4)}


def run(args: argparse.Namespace, python: str | None) -> dict[str, Any]:
    reference_data = make_data(args.seed, REFERENCE_ROWS, current=False)
    current_data = make_data(args.seed + 1, args.rows, current=True)
    ours = run_archipel(reference_data, current_data, args.repeat)
    design = {name: expected for name, (_, _, expected, _) in FEATURES.items()}
    misses = [n for n, e in design.items() if e is not None and ours["columns"][n]["drifted"] != e]
    result: dict[str, Any] = {
        "archipel": {**ours, **_timing(ours["seconds"])},
        "design": {n: {"expected": e, "change": FEATURES[n][3]} for n, e in design.items()},
        "design_misses": misses,
        "design_ok": not misses,
        "evidently": None,
    }
    if python is None:
        return result
    with tempfile.TemporaryDirectory(prefix="archipel-bench-") as tmp:
        theirs = run_evidently(python, reference_data, current_data, args.repeat, Path(tmp))
    theirs |= _timing(theirs["seconds"])
    disagree = [n for n in FEATURES if ours["columns"][n]["drifted"] != theirs["columns"][n]["drifted"]]
    result |= {
        "evidently": theirs,
        "ratio_median": round(theirs["median_s"] / result["archipel"]["median_s"], 1),
        "ratio_best": round(theirs["best_s"] / result["archipel"]["best_s"], 1),
        "ratio_with_reference_profile": round(
            theirs["median_s"] / (result["archipel"]["median_s"] + ours["reference_profile_s"]), 1
        ),
        "target_met": theirs["median_s"] / result["archipel"]["median_s"] >= TARGET_RATIO,
        "agree": len(FEATURES) - len(disagree),
        "disagreements": disagree,
        "same_tests": [n for n in FEATURES if ours["columns"][n]["method"] == theirs["columns"][n]["method"]],
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="current rows (default 1,000,000, or 50,000 with --quick)")
    parser.add_argument("--repeat", type=int, help="timed runs of each tool (default 3, or 1 with --quick)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="CI smoke mode: 50,000 rows, one run each")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.add_argument("--setup", action="store_true", help=f"create {BENCH_VENV.name} with Evidently first")
    parser.add_argument("--bench-venv", type=Path, default=BENCH_VENV, help="the venv with Evidently")
    add_out_option(parser, "monitoring")
    args = parser.parse_args()
    args.rows = args.rows or (50_000 if args.quick else 1_000_000)
    args.repeat = max(1, args.repeat or (1 if args.quick else 3))
    if args.setup:
        setup_bench_venv(args.bench_venv)
    python = evidently_python(args.bench_venv)
    if python is None and not args.quick:
        print(f"Evidently is not installed in {args.bench_venv}: run this with --setup (or the commands in "
              f"{REQUIREMENTS.relative_to(ROOT)}); --quick runs archipel alone", file=sys.stderr)  # fmt: skip
        return 2
    load = os.getloadavg()[0]
    measured = run(args, python)
    result = {"quick": args.quick, "rows": args.rows, "reference_rows": REFERENCE_ROWS, "features": len(FEATURES),
              "repeat": args.repeat, "seed": args.seed, "cpus": os.cpu_count(), "load_before": round(load, 2),
              "load_after": round(os.getloadavg()[0], 2), **measured}  # fmt: skip
    save("monitoring", result, quick=args.quick, out=args.out)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0 if result["design_ok"] else 1


def _score(column: dict[str, Any]) -> str:
    return "-" if column["score"] is None else f"{column['score']:.4f}"


def _print(result: dict[str, Any]) -> None:
    a, e = result["archipel"], result["evidently"]
    print(
        f"{result['rows']:,} current rows x {result['features']} features ({len(NUMERIC)} numeric, "
        f"{len(CATEGORICAL)} categorical) against {result['reference_rows']:,} reference rows; best and median of "
        f"{result['repeat']}; {result['cpus']} CPUs, load average {result['load_before']:.2f} before, "
        f"{result['load_after']:.2f} after"
    )
    print(
        f"archipel detect: best {a['best_s']:.3f} s, median {a['median_s']:.3f} s (the tests on the site's profile "
        f"alone: {a['tests_only_s'] * 1e3:.1f} ms); reference profile, once: {a['reference_profile_s']:.3f} s, "
        f"{a['reference_profile_kb']} KB; current profile {a['current_profile_kb']} KB"
    )
    if e is None:
        print(
            "Evidently: not run (no venv with Evidently; `python benchmarks/monitoring.py --setup` makes one)"
        )
    else:
        print(f"Evidently {e['version']} Report([DataDriftPreset()]): best {e['best_s']:.3f} s, median "
              f"{e['median_s']:.3f} s")  # fmt: skip
        print(
            f"Evidently / archipel: {result['ratio_median']:.1f}x (median), {result['ratio_best']:.1f}x (best), "
            f"{result['ratio_with_reference_profile']:.1f}x counting archipel's reference profile; target "
            f"(>= {TARGET_RATIO:g}x): {'MET' if result['target_met'] else 'MISSED'}"
        )
    head = f"\n{'feature':<17}{'design':<29}{'archipel test':<15}{'score':>8}  drift  "
    print((head + (f"{'evidently test':<15}{'score':>8}  drift  agree" if e else "")).rstrip())
    for name, design in result["design"].items():
        ours = a["columns"][name]
        expected = {True: "drift", False: "none", None: "borderline"}[design["expected"]]
        label = f"{expected}{': ' + design['change'] if design['change'] and design['expected'] is not False else ''}"
        line = f"{name:<17}{label:<29}{ours['method']:<15}{_score(ours):>8}  {'yes' if ours['drifted'] else 'no':<5}  "
        if e:
            theirs = e["columns"][name]
            same = "yes" if theirs["drifted"] == ours["drifted"] else "NO"
            line += f"{theirs['method']:<15}{_score(theirs):>8}  {'yes' if theirs['drifted'] else 'no':<5}  {same}"
        print(line.rstrip())
    print(
        f"dataset drift (archipel): {'yes' if a['dataset_drift'] else 'no'} ({a['share_drifted']:.0%} of features); "
        f"design check (clear drifts flagged, undrifted features not): "
        f"{'ok' if result['design_ok'] else 'FAILED: ' + ', '.join(result['design_misses'])}"
    )
    if e:
        disagree = ", ".join(result["disagreements"]) or "none"
        print(
            f"verdicts agree on {result['agree']} of {result['features']} features (disagreements: {disagree}); "
            f"same test on {len(result['same_tests'])} of {result['features']}"
        )


if __name__ == "__main__":
    sys.exit(main())
