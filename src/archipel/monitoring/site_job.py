"""The drift job, run at the site that holds a deployment's request samples: ``python -m
archipel.monitoring.site_job SPEC.json``.

The spec (written by :mod:`archipel.services.monitoring`) names the site's storage, the samples' prefix and
window, the model version's drift reference (key and sha256, in the same storage) and the drift settings. The job
reads the samples (raw rows, which stay here), profiles them against the reference with at least
``min_count_per_bin`` rows behind every number, runs the tests, and writes only aggregates to
``output_key`` in the site's storage: the report (per feature: test, score, threshold, verdict, PSI, row counts)
and, per numeric feature, the reference's and the window's histograms over the reference's deciles, and the
skew between the training and serving schemas (features missing, extra, or of another type). Nothing else
is imported: no CLI, no metadata store.
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["main", "profile_window"]

STAMP = "%Y%m%dT%H%M%S"


def profile_window(store: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """The aggregates of the samples under ``spec['prefix']`` written in [since, until) (see the module docstring)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from archipel.monitoring.drift import DriftConfig, current_profile, detect, schema_skew

    raw = store.get(spec["reference_key"])
    if hashlib.sha256(raw).hexdigest() != spec["reference_sha256"]:
        raise RuntimeError(f"the drift reference at {spec['reference_key']} does not match its sha256")
    reference = json.loads(raw)
    since, until = spec["since"], spec["until"]
    tables, files = [], 0
    for info in store.list(spec["prefix"].rstrip("/") + "/"):
        name = info.key.rsplit("/", 1)[-1]
        try:  # samples are named <UTC time>-<hex>.parquet when written: the window is picked by name first
            written = datetime.strptime(name.split("-", 1)[0], STAMP).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
        if written < since - 3600 or written >= until + 3600:  # a file spans up to its flush interval
            continue
        table = pq.read_table(pa.BufferReader(store.get(info.key)))
        at = table.column("at").to_numpy()
        table = table.filter(pa.array((at >= since) & (at < until)))
        if table.num_rows:
            tables.append(table)
            files += 1
    features = list(reference["features"])
    out: dict[str, Any] = {"rows": 0, "files": files, "min_count_per_bin": spec["min_count_per_bin"]}
    if not tables:
        return out | {"report": None, "histograms": {}}
    table = pa.concat_tables(tables)
    rows = int(table.num_rows)
    served = {f.name: f.type.to_pandas_dtype() for f in table.schema if f.name not in ("request_id", "at")}
    served = {n: t for n, t in served.items() if not n.startswith("output_")}
    # names and types; the order is the signature's by construction (the stored reference keeps its keys sorted)
    ordered = {n: served[n] for n in features if n in served} | served
    skew = schema_skew(reference, ordered).to_dict()
    X = {name: table.column(name).to_numpy() for name in features if name in table.column_names}
    outputs = [c for c in table.column_names if c.startswith("output_")]
    predictions = None
    wanted = list(reference.get("predictions", {}))
    if wanted and outputs:  # the reference's prediction column is the model's first output
        predictions = {wanted[0]: np.asarray(table.column(outputs[0]).to_numpy())}
    current = current_profile(
        X, reference, predictions=predictions, min_count_per_bin=spec["min_count_per_bin"]
    )
    report = detect(reference, current, DriftConfig(drift_share=spec.get("drift_share", 0.5)))
    histograms = {
        name: {
            "edges": ref["histogram"]["edges"],
            "reference": ref["histogram"]["counts"],
            "current": current["features"][name]["histogram"]["counts"],
        }
        for name, ref in reference["features"].items()
        if ref["kind"] == "numeric" and "histogram" in current["features"][name]
    }
    return out | {"rows": rows, "report": report.to_dict(), "histograms": histograms, "schema": skew}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    from archipel.backends.storage.registry import open_store

    store = open_store(spec["storage"]["url"], spec["storage"].get("options") or {})
    result = profile_window(store, spec)
    store.put(spec["output_key"], json.dumps(result, sort_keys=True).encode())
    print(f"DRIFT {spec['output_key']} rows={result['rows']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
