"""Where a benchmark leaves its JSON summary: ``--out PATH``, or by default (full runs) ``results/NAME.json``.

The file holds the summary ``--json`` prints plus a ``recorded`` object: the command line that produced it, the
date (UTC) and the machine (CPU count and model). ``scripts/gen_docs.py`` renders ``docs/benchmarks.md`` from
these files. ``--quick`` runs (the CI smoke tests) write nothing unless given ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "add_out_option", "save"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def add_out_option(parser: argparse.ArgumentParser, name: str) -> None:
    """Add ``--out PATH`` to a benchmark's parser."""
    parser.add_argument(
        "--out",
        type=Path,
        help=f"write the JSON summary here (default for a full run: benchmarks/results/{name}.json; "
        "--quick writes nothing unless given --out)",
    )


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def _command() -> str:
    """How this process was started, as a reader would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def save(name: str, result: dict[str, Any], *, quick: bool, out: Path | None) -> None:
    """Write ``result`` with its ``recorded`` provenance to ``out``, else (full run) ``results/NAME.json``.

    A ``--quick`` run without ``--out`` writes nothing. Says where on stderr: stdout stays the table or the one
    JSON line.
    """
    path = out or (None if quick else RESULTS / f"{name}.json")
    if path is None:
        return
    recorded = {
        "command": _command(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "recorded": recorded}, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {path}", file=sys.stderr)
