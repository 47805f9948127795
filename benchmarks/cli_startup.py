"""`archipel --help` wall time against `python -c pass`, run alternately in the same session.

Target (foundation issue): under 0.3 s more than the bare interpreter. Prints medians, the difference
and the ratio; `--quick` (CI smoke mode) runs a few rounds only. Exit code 1 if the target is missed.

    python benchmarks/cli_startup.py [--rounds 15] [--quick] [--json] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from results import add_out_option, save

TARGET_EXTRA_S = 0.3


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def measure(rounds: int) -> dict[str, float]:
    baseline_cmd = [sys.executable, "-c", "pass"]
    help_cmd = [sys.executable, "-m", "archipel.cli", "--help"]
    _time(baseline_cmd), _time(help_cmd)  # warm the page cache
    base, helps = [], []
    for _ in range(rounds):  # alternate so noise hits both alike
        base.append(_time(baseline_cmd))
        helps.append(_time(help_cmd))
    b, h = statistics.median(base), statistics.median(helps)
    return {
        "rounds": rounds,
        "python_pass_median_s": round(b, 4),
        "archipel_help_median_s": round(h, 4),
        "extra_s": round(h - b, 4),
        "ratio": round(h / b, 2),
        "target_extra_s": TARGET_EXTRA_S,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="CI smoke mode: 3 rounds")
    parser.add_argument("--json", action="store_true")
    add_out_option(parser, "cli_startup")
    args = parser.parse_args()
    result = measure(3 if args.quick else args.rounds)
    save("cli_startup", result, quick=args.quick, out=args.out)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"python -c pass: {result['python_pass_median_s'] * 1000:.0f} ms | archipel --help: "
            f"{result['archipel_help_median_s'] * 1000:.0f} ms | extra {result['extra_s'] * 1000:.0f} ms "
            f"(target < {TARGET_EXTRA_S * 1000:.0f} ms) | ratio {result['ratio']}x over {result['rounds']} rounds"
        )
    return 0 if result["extra_s"] < TARGET_EXTRA_S else 1


if __name__ == "__main__":
    sys.exit(main())
