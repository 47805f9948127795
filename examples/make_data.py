"""Write the demo's datasets as CSV files, to add with ``archipel data add``.

    python examples/make_data.py DIR [--eu 4000] [--us 3000] [--codes 30000]

``patients-eu.csv`` and ``patients-us.csv``: synthetic hospital records (the same generator and seeds as
``archipel demo``: age, bmi, systolic_bp, glucose, smoker, prior_admissions and whether the patient was readmitted),
treated as personal health data (``phi``) to show what residency rules do; ``diagnosis-codes.csv``: a public
reference table. Nothing is downloaded; the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from archipel.data.synthetic import write_patients_csv, write_reference_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--eu", type=int, default=4000, help="EU patients (default 4000)")
    parser.add_argument("--us", type=int, default=3000, help="US patients (default 3000)")
    parser.add_argument("--codes", type=int, default=30000, help="reference rows (default 30000)")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    written = [
        write_patients_csv(args.folder / "patients-eu.csv", args.eu, seed=7, id_prefix="eu"),
        write_patients_csv(args.folder / "patients-us.csv", args.us, seed=8, id_prefix="us"),
        write_reference_csv(args.folder / "diagnosis-codes.csv", args.codes, seed=9),
    ]
    for path in written:
        print(f"{path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
