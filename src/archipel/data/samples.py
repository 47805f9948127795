"""Real records for the demo and the docs: scikit-learn's bundled breast-cancer data (Wisconsin diagnostic), split
into an EU and a US hospital's patients. Nothing is downloaded: the table ships inside scikit-learn.

569 tumours, each 30 measurements of a fine-needle aspirate's cell nuclei (mean, error and worst of ten
properties) and whether it was malignant. They are public research data, *treated* here as personal health data
(classification ``phi``) to show what residency rules do. The split is a seeded permutation: the same seed gives
the same bytes on every machine.
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["LABEL", "MEAN_FEATURES", "PATIENT_FILES", "feature_names", "write_patients_csvs"]

LABEL = "malignant"
PATIENT_FILES = {"patients-eu": "eu", "patients-us": "us"}  # dataset name -> the patient ids' prefix
EU_SHARE = 0.6


MEAN_FEATURES = (
    "mean_radius",
    "mean_texture",
    "mean_perimeter",
    "mean_area",
    "mean_smoothness",
    "mean_compactness",
    "mean_concavity",
    "mean_concave_points",
    "mean_symmetry",
    "mean_fractal_dimension",
)
"""The ten ``mean_*`` measurements (of 30: each also has ``_error`` and ``worst_``): what the demo's model reads."""


def feature_names() -> list[str]:
    """The 30 measurements as CSV columns, scikit-learn's names in snake_case (``mean_radius`` ...)."""
    from sklearn.datasets import load_breast_cancer

    return [str(name).replace(" ", "_") for name in load_breast_cancer().feature_names]


def write_patients_csvs(folder: Path, *, seed: int = 7) -> dict[str, Path]:
    """``patients-eu.csv`` (60 % of the tumours) and ``patients-us.csv`` (the rest) in ``folder``, by dataset name.

    Columns: ``patient_id``, the 30 measurements, ``malignant`` (1 malignant, 0 benign)."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    cut = round(len(order) * EU_SHARE)
    parts = {"patients-eu": order[:cut], "patients-us": order[cut:]}
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, rows in parts.items():
        path = folder / f"{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("patient_id", *feature_names(), LABEL))
            for i, row in enumerate(sorted(rows)):
                values = (repr(float(v)) for v in bunch.data[row])
                writer.writerow((f"{PATIENT_FILES[name]}-{i:04d}", *values, int(bunch.target[row] == 0)))
        written[name] = path
    return written
