"""Write the demo's datasets as CSV files, to add with ``archipel data add``.

    python examples/make_data.py DIR [--codes 30000]

``patients-eu.csv`` (341 tumours) and ``patients-us.csv`` (228): scikit-learn's bundled breast-cancer data
(30 measurements of a fine-needle aspirate's cell nuclei and whether the tumour was ``malignant``), split as
``archipel demo`` splits it, treated as personal health data (``phi``) to show what residency rules do;
``diagnosis-codes.csv``: a public reference table. Nothing is downloaded; the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from archipel.data.samples import write_patients_csvs
from archipel.data.synthetic import write_reference_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--codes", type=int, default=30000, help="reference rows (default 30000)")
    args = parser.parse_args()
    written = [
        *write_patients_csvs(args.folder).values(),
        write_reference_csv(args.folder / "diagnosis-codes.csv", args.codes, seed=9),
    ]
    for path in written:
        print(f"{path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
