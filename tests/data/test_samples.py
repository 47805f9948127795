"""The demo's records: scikit-learn's bundled breast-cancer data, split between two hospitals the same way on every
machine, every tumour in exactly one of them, its values and diagnosis unchanged."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from archipel.data.samples import LABEL, MEAN_FEATURES, feature_names, write_patients_csvs


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_split_is_the_whole_table_once_and_the_same_every_time(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    first, second = write_patients_csvs(tmp_path / "a"), write_patients_csvs(tmp_path / "b")
    for name in ("patients-eu", "patients-us"):
        assert (
            hashlib.sha256(first[name].read_bytes()).digest()
            == hashlib.sha256(second[name].read_bytes()).digest()
        )
    eu, us = _rows(first["patients-eu"]), _rows(first["patients-us"])
    assert (len(eu), len(us)) == (341, 228)
    assert [r["patient_id"] for r in eu][:2] == ["eu-0000", "eu-0001"] and us[0]["patient_id"] == "us-0000"
    header = list(eu[0])
    assert header == ["patient_id", *feature_names(), LABEL] and list(MEAN_FEATURES) == feature_names()[:10]
    # every tumour once, with its measurements and diagnosis (sklearn's target 0 is malignant)
    bunch = load_breast_cancer()
    original = sorted(
        (tuple(float(v) for v in row), int(t == 0)) for row, t in zip(bunch.data, bunch.target, strict=True)
    )
    written = sorted((tuple(float(r[f]) for f in feature_names()), int(r[LABEL])) for r in eu + us)
    assert written == original
    assert 0.3 < sum(int(r[LABEL]) for r in eu) / len(eu) < 0.45  # malignant share near the table's 37 %
    assert (
        write_patients_csvs(tmp_path / "c", seed=8)["patients-eu"].read_bytes()
        != first["patients-eu"].read_bytes()
    )
