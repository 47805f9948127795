"""A deterministic synthetic reference table for the demo and tests (nothing is downloaded at run time).

Diagnosis codes with a cost weight, every value from a seeded generator: public, nothing personal in it. The
patients are real records instead: :mod:`archipel.data.samples`.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

__all__ = ["write_reference_csv"]


def write_reference_csv(path: Path, rows: int, *, seed: int) -> Path:
    """A public reference table (diagnosis codes with a cost weight): nothing personal in it."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("code", "chapter", "weight", "description"))
        for i in range(rows):
            chapter = rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            writer.writerow((f"{chapter}{i:05d}", chapter, round(rng.uniform(0.2, 4.0), 3), f"condition {i}"))
    return path
