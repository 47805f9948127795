"""Deterministic synthetic tables for the demo and tests (nothing is downloaded at run time).

The records look like a hospital's readmission data, but every value comes from a seeded generator: they are
*treated* as personal health data (classification ``phi``) to show what the policies do, and are no one's data.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

__all__ = ["write_patients_csv", "write_reference_csv"]

PATIENT_COLUMNS = (
    "patient_id",
    "age",
    "bmi",
    "systolic_bp",
    "glucose",
    "smoker",
    "prior_admissions",
    "readmitted",
)


def write_patients_csv(path: Path, rows: int, *, seed: int, id_prefix: str) -> Path:
    """``rows`` synthetic patients; ``readmitted`` depends on the other columns so a model can learn it."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PATIENT_COLUMNS)
        for i in range(rows):
            age = rng.randint(18, 95)
            bmi = round(rng.gauss(27, 5), 1)
            bp = int(rng.gauss(128, 18))
            glucose = int(rng.gauss(105, 25))
            smoker = int(rng.random() < 0.22)
            prior = min(int(rng.expovariate(0.8)), 12)
            risk = 0.03 * (age - 50) + 0.08 * (bmi - 27) + 0.02 * (glucose - 105) + 0.6 * smoker + 0.5 * prior
            readmitted = int(risk + rng.gauss(0, 1.2) > 1.0)
            writer.writerow((f"{id_prefix}-{i:06d}", age, bmi, bp, glucose, smoker, prior, readmitted))
    return path


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
