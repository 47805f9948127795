"""The two profiles drift is computed from, each a pure function of arrays and dicts (no storage, no database, no
pandas); :mod:`archipel.monitoring.drift` compares them.

* :func:`reference_profile`, once, where the reference data is: per feature what the model card's
  :func:`archipel.registry.card.profile` records (count, missing, mean, std, min, max, quantiles, a histogram,
  here over the reference's deciles) plus what the tests need: numeric features their quantile function on a
  1001-level grid (``grid``, packed float32, ~5.4 KB), categorical features the counts of their
  ``max_categories`` most frequent values (the rest as ``other_count``). JSON-serializable.
* :func:`current_profile`, at the site, over a window of served rows, against the reference: the same summary
  fields; numeric features as centroids (row count and mean of the rows in each non-empty cell between
  consecutive reference grid values), categorical features as counts of the reference's categories (anything
  else in ``other_count``). With ``min_count_per_bin=k`` every centroid, category count and histogram bin in
  it covers at least k rows or none: adjacent cells merge, categories under k move to ``other_count`` (listed
  in ``merged``, with those absent, so the list says nothing of which were present) and per-row facts (min, max)
  are left out. This is what leaves a site; raw rows never do. (Each number covers k rows; two partitions of
  the same rows, centroids and value counts of a numeric feature with few values, are not protected against
  being subtracted from each other.)

Both sides are rounded to float32 first, the precision the ONNX model sees, so a float64 training set and the
float32 rows served compare value for value (integers past 2**24 lose their last digits). Missing values (NaN,
and +-inf for numeric features; None for object columns) are counted in ``missing``, never kept as values.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from archipel.errors import SpecError
from archipel.registry.card import QUANTILES

__all__ = ["CURRENT_FORMAT", "REFERENCE_FORMAT", "current_profile", "reference_profile"]

GRID_LEVELS = 1001
PSI_BINS = 10
DISCRETE_VALUES = 5  # Evidently: a numeric feature with at most this many values is tested as categorical
MAX_CATEGORIES = 100
REFERENCE_FORMAT = "archipel.drift.reference/1"
CURRENT_FORMAT = "archipel.drift.current/1"
_STEP = (GRID_LEVELS - 1) // PSI_BINS  # grid values between consecutive deciles


def reference_profile(
    X: Any,
    feature_names: Sequence[str],
    categorical: Sequence[str] = (),
    predictions: Any = None,
    *,
    max_categories: int = MAX_CATEGORIES,
) -> dict[str, Any]:
    """The drift reference of ``X``: a 2D array whose columns are ``feature_names``, or a mapping of columns, a
    pandas DataFrame or a pyarrow Table holding them. ``categorical`` names the categorical features; the others
    must be numbers. ``predictions`` (an array, one column per output, or a mapping of arrays) are profiled
    too: floats as numeric, anything else as categorical."""
    names = [str(n) for n in feature_names]
    if len(set(names)) != len(names):
        raise SpecError(f"feature names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    if unknown := [c for c in categorical if c not in names]:
        raise SpecError(f"categorical features {unknown} are not among the feature names")
    if max_categories < 1:
        raise SpecError(f"max_categories must be at least 1, not {max_categories}")
    columns, rows = _table(X, names)

    def one(name: str, column: np.ndarray, numeric: bool) -> dict[str, Any]:
        return _reference_numeric(column, name) if numeric else _reference_categorical(column, max_categories)

    return {
        "format": REFERENCE_FORMAT,
        "rows": rows,
        "features": {n: one(n, c, n not in categorical) for n, c in columns.items()},
        "predictions": {
            n: one(n, c, c.dtype.kind == "f") for n, c in _prediction_columns(predictions, rows).items()
        },
    }


def current_profile(
    X: Any,
    reference: Mapping[str, Any],
    *,
    predictions: Any = None,
    feature_names: Sequence[str] | None = None,
    min_count_per_bin: int = 1,
) -> dict[str, Any]:
    """Aggregates of a window of served rows against ``reference``, computed where the rows are (see the module
    docstring). ``X`` as for :func:`reference_profile`; a 2D array's columns are ``feature_names``, by default
    the reference's features in order; extra columns are ignored. ``predictions`` as the reference's."""
    _check_reference(reference)
    if min_count_per_bin < 1:
        raise SpecError(f"min_count_per_bin must be at least 1, not {min_count_per_bin}")
    names = list(reference["features"])
    columns, rows = _table(X, [str(n) for n in feature_names] if feature_names is not None else names)
    if missing := [n for n in names if n not in columns]:
        raise SpecError(f"the data lacks reference features {missing}; schema_skew() lists the differences")
    outputs = _prediction_columns(predictions, rows)
    if unknown := [n for n in outputs if n not in reference.get("predictions", {})]:
        known = list(reference.get("predictions", {}))
        raise SpecError(f"predictions {unknown} are not in the reference, which has {known}")
    k = int(min_count_per_bin)

    def one(name: str, column: np.ndarray, ref: Mapping[str, Any]) -> dict[str, Any]:
        if ref["kind"] == "numeric":
            return _current_numeric(column, ref, name, k)
        return _current_categorical(column, ref, k)

    return {
        "format": CURRENT_FORMAT,
        "reference": _digest(reference),
        "rows": rows,
        "min_count_per_bin": k,
        "features": {n: one(n, columns[n], reference["features"][n]) for n in names},
        "predictions": {n: one(n, c, reference["predictions"][n]) for n, c in outputs.items()},
    }


# --- inputs -----------------------------------------------------------------------------------------------


def _is(value: Any, profile_format: str) -> bool:
    """Whether ``value`` is a profile of that format (a mapping of columns may have a column named "format")."""
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("format"), str)
        and value["format"] == profile_format
    )


def _check_reference(reference: Any) -> None:
    if not _is(reference, REFERENCE_FORMAT):
        raise SpecError(
            "not a reference profile: build one with archipel.monitoring.drift.reference_profile()"
        )


def _table(X: Any, names: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
    """The columns ``names`` of X as 1D arrays, and the row count."""
    if isinstance(X, Mapping) or hasattr(X, "column_names") or hasattr(X, "columns"):
        arrow = hasattr(X, "column_names")
        available = set(X.column_names if arrow else X.keys() if isinstance(X, Mapping) else X.columns)
        if missing := [n for n in names if n not in available]:
            raise SpecError(f"the data has no column {missing}; schema_skew() lists the differences")
        columns = {}
        for name in names:
            column = X.column(name) if arrow else X[name]
            if arrow:
                column = column.to_numpy(zero_copy_only=False)
            elif hasattr(column, "to_numpy"):
                column = column.to_numpy()
            columns[name] = np.asarray(column)
    else:
        data = np.asarray(X)
        if data.ndim != 2 or data.shape[1] != len(names):
            raise SpecError(
                f"expected rows of {len(names)} features {list(names)}, got an array of shape {data.shape}"
            )
        columns = {name: data[:, i] for i, name in enumerate(names)}
    if (
        not all(c.ndim == 1 for c in columns.values())
        or len(lengths := {len(c) for c in columns.values()}) > 1
    ):
        raise SpecError(
            f"columns must be 1D and of one length: { ({n: c.shape for n, c in columns.items()}) }"
        )
    return columns, lengths.pop() if lengths else 0


def _prediction_columns(predictions: Any, rows: int) -> dict[str, np.ndarray]:
    if predictions is None:
        return {}
    if isinstance(predictions, Mapping):
        columns = {str(k): np.asarray(v) for k, v in predictions.items()}
    else:
        values = np.asarray(predictions)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        columns = (
            {"prediction": values}
            if values.ndim == 1
            else {f"prediction_{j}": values[:, j] for j in range(values.shape[1])}
        )
    for name, column in columns.items():
        if column.shape != (rows,):
            raise SpecError(f"prediction {name!r} has shape {column.shape}, not ({rows},) like the rows")
    return columns


def _digest(reference: Mapping[str, Any]) -> str:
    """What a current profile depends on: each entry's kind, grid and categories."""
    basis = {
        part: {
            n: [f["kind"], f.get("grid"), f.get("categories", {}).get("values")] for n, f in entries.items()
        }
        for part, entries in (
            ("features", reference["features"]),
            ("predictions", reference.get("predictions", {})),
        )
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pack(values: np.ndarray, dtype: Literal["f4", "f8", "u4"]) -> str:
    return f"{dtype}:" + base64.b64encode(np.ascontiguousarray(values, dtype="<" + dtype).tobytes()).decode(
        "ascii"
    )


def _unpack(text: str) -> np.ndarray:
    dtype, _, data = text.partition(":")
    if dtype not in ("f4", "f8", "u4"):
        raise SpecError(f"unknown packed array type {dtype!r}")
    return np.frombuffer(base64.b64decode(data), dtype="<" + dtype)


# --- features ---------------------------------------------------------------------------------------------


def _finite_sorted(column: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """The column's finite values rounded to float32 and sorted (a copy), and how many were missing."""
    if column.dtype.kind == "O":
        column = np.where(column == None, np.nan, column)  # noqa: E711 (elementwise)
    if column.dtype.kind not in "iufb":
        try:
            column = column.astype(np.float64)
        except (TypeError, ValueError):
            raise SpecError(
                f"feature {name!r} is numeric in the reference but holds {column.dtype} values"
            ) from None
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.array(column, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    values.sort()
    return values, int(column.size - values.size)


def _runs(xs: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in sorted ``xs``."""
    new = np.empty(xs.size, dtype=bool)
    new[:1] = True
    np.not_equal(xs[1:], xs[:-1], out=new[1:])
    return np.flatnonzero(new)


def _reference_numeric(column: np.ndarray, name: str) -> dict[str, Any]:
    xs, missing = _finite_sorted(column, name)
    n = int(xs.size)
    out: dict[str, Any] = {"kind": "numeric", "dtype": str(column.dtype), "count": n, "missing": missing}
    if not n:
        return out
    level = np.arange(GRID_LEVELS, dtype=np.int64)  # inverted CDF: the smallest x with F(x) >= level/1000
    grid = xs[np.maximum((level * n + GRID_LEVELS - 2) // (GRID_LEVELS - 1) - 1, 0)]
    tail = max(1, n // (GRID_LEVELS - 1))
    values = xs.astype(np.float64)
    starts = _runs(xs)
    edges = np.unique(grid[::_STEP])
    bounds = np.searchsorted(xs, edges, side="left")
    bounds[-1] = n  # the last bin holds the maximum, as np.histogram's does
    out |= {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values[0]),
        "max": float(values[-1]),
        "quantiles": {
            str(q): float(v) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True)
        },
        "histogram": {
            "edges": edges.astype(np.float64).tolist() if len(edges) > 1 else [float(edges[0])] * 2,
            "counts": np.diff(bounds).tolist() if len(edges) > 1 else [n],
        },
        "distinct": len(starts),
        "grid": _pack(grid, "f4"),
        # the means of the lowest and highest 1/1000 of the rows: where the extreme atoms sit (heavy tails)
        "tails": [float(values[:tail].mean()), float(values[-tail:].mean())],
    }
    if len(starts) <= DISCRETE_VALUES:
        counts = np.diff(np.append(starts, n))
        out |= {
            "categories": {"values": values[starts].tolist(), "counts": counts.tolist()},
            "other_count": 0,
        }
    return out


def _value_counts(column: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Distinct non-missing values, their counts, and the number missing (NaN, +-inf, None)."""
    missing = 0
    if column.dtype.kind == "O":
        absent = (column == None) | (column != column)  # noqa: E711 (elementwise; NaN != NaN)
        missing, column = int(absent.sum()), column[~absent]
    elif column.dtype.kind == "f":
        finite = np.isfinite(column)
        missing = int(column.size - np.count_nonzero(finite))
        column = column if not missing else column[finite]
        if (
            column.size
            and np.abs(column).max() < 2**53
            and np.array_equal(whole := column.astype(np.int64), column)
        ):
            values, counts, _ = _value_counts(whole)
            return values.astype(column.dtype), counts, missing
    if column.dtype.kind == "b":
        counts = np.bincount(column.view(np.uint8), minlength=2)
        present = np.flatnonzero(counts)
        return np.array([False, True])[present], counts[present].astype(np.int64), missing
    if column.dtype.kind in "iu" and column.size and int(column.max()) - int(column.min()) < 1 << 22:
        low = int(column.min())  # small integer codes: one bincount instead of a sort
        counts = np.bincount((column - low).astype(np.intp))
        present = np.flatnonzero(counts)
        return (present + low).astype(column.dtype), counts[present].astype(np.int64), missing
    try:
        values, counts = np.unique(column, return_counts=True)
    except TypeError:  # objects of mixed types: compared as text
        values, counts = np.unique(column.astype(str), return_counts=True)
    return values, counts.astype(np.int64), missing


def _json_values(values: np.ndarray) -> list[Any]:
    return [v if isinstance(v, str | int | float | bool) else str(v) for v in values.tolist()]


def _reference_categorical(column: np.ndarray, max_categories: int) -> dict[str, Any]:
    values, counts, missing = _value_counts(column)
    order = np.argsort(-counts, kind="stable")
    values, counts = values[order], counts[order]
    return {
        "kind": "categorical",
        "dtype": str(column.dtype),
        "count": int(counts.sum()),
        "missing": missing,
        "distinct": len(values),
        "categories": {
            "values": _json_values(values[:max_categories]),
            "counts": counts[:max_categories].tolist(),
        },
        "other_count": int(counts[max_categories:].sum()),
    }


def _match(values: np.ndarray, reference: list[Any]) -> np.ndarray:
    """For each of ``values``, its index in ``reference`` or -1."""
    out = np.full(len(values), -1, dtype=np.int64)
    numeric = values.dtype.kind in "iufb" or (
        values.dtype.kind == "O" and all(isinstance(v, int | float | np.number) for v in values.tolist())
    )
    if not reference or not len(values) or numeric != all(isinstance(v, int | float) for v in reference):
        return out
    ref = np.asarray(reference, dtype=np.float64 if numeric else str)
    cur = values.astype(ref.dtype)
    order = np.argsort(ref, kind="stable")
    pos = np.minimum(np.searchsorted(ref[order], cur), len(ref) - 1)
    hit = ref[order][pos] == cur
    out[hit] = order[pos[hit]]
    return out


def _current_categories(
    values: np.ndarray, counts: np.ndarray, reference: list[Any], k: int
) -> dict[str, Any]:
    """Counts of the reference's categories among (values, counts), the rest in ``other_count``; with k > 1 every
    category under k rows (absent ones too) and, while that bucket is under k, the smallest others, are folded
    into it and listed by index in ``merged``."""
    index = _match(values, reference)
    seen = index >= 0
    per = np.bincount(index[seen], weights=counts[seen], minlength=len(reference)).astype(np.int64)
    other = int(counts[~seen].sum())
    fold = per < k if k > 1 else np.zeros(len(per), dtype=bool)
    while 0 < other + int(per[fold].sum()) < k and not fold.all():
        fold[np.flatnonzero(~fold)[np.argmin(per[~fold])]] = True
    other += int(per[fold].sum())
    per[fold] = 0
    return {
        "categories": {"values": list(reference), "counts": per.tolist()},
        "other_count": other,
        "other_distinct": int(np.count_nonzero(~seen)),
        "merged": np.flatnonzero(fold).tolist(),
    }


def _merge_cells(counts: np.ndarray, means: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent cells merged left to right until each holds at least k rows (the remainder joins the last)."""
    groups: list[list[float]] = []
    held, total = 0, 0.0
    for count, mean in zip(counts.tolist(), means.tolist(), strict=True):  # cells, not rows: at most 1002
        held, total = held + count, total + count * mean
        if held >= k:
            groups.append([held, total])
            held, total = 0, 0.0
    if held:
        groups[-1][0] += held
        groups[-1][1] += total
    merged = np.array(groups, dtype=np.float64).reshape(-1, 2)
    return merged[:, 0].astype(np.int64), merged[:, 1] / merged[:, 0]


def _current_numeric(column: np.ndarray, ref: Mapping[str, Any], name: str, k: int) -> dict[str, Any]:
    xs, missing = _finite_sorted(column, name)
    n = int(xs.size)
    out: dict[str, Any] = {"kind": "numeric", "dtype": str(column.dtype), "count": n, "missing": missing}
    if not n or "grid" not in ref:
        return out
    if n < k:
        return out | {"suppressed": True}
    values = xs.astype(np.float64)
    bounds = np.searchsorted(xs, np.unique(_unpack(ref["grid"])), side="left")
    starts, ends = np.concatenate(([0], bounds)), np.concatenate((bounds, [n]))
    starts, ends = starts[ends > starts], ends[ends > starts]  # the non-empty cells
    cumulative = np.concatenate(([0.0], np.cumsum(values)))
    counts = ends - starts
    low, high = values[starts], values[ends - 1]
    with np.errstate(invalid="ignore"):
        means = np.where(
            low == high, low, np.clip((cumulative[ends] - cumulative[starts]) / counts, low, high)
        )
    if k > 1:
        counts, means = _merge_cells(counts, means, k)
    edges = np.asarray(ref["histogram"]["edges"])
    bins = np.searchsorted(edges[1:-1], means, side="right")
    out |= {
        "mean": float(cumulative[-1] / n),
        "std": float(values.std()),
        "histogram": {
            "edges": ref["histogram"]["edges"],
            "counts": np.bincount(bins, weights=counts, minlength=len(edges) - 1).astype(np.int64).tolist(),
        },
        "centroids": {"counts": _pack(counts, "u4"), "means": _pack(means, "f8")},
    }
    if k == 1:
        out |= {"min": float(values[0]), "max": float(values[-1])}
    if "categories" in ref:
        starts = _runs(xs)
        run_counts = np.diff(np.append(starts, n))
        out |= _current_categories(values[starts], run_counts, ref["categories"]["values"], k)
    return out


def _current_categorical(column: np.ndarray, ref: Mapping[str, Any], k: int) -> dict[str, Any]:
    values, counts, missing = _value_counts(column)
    n = int(counts.sum())
    out: dict[str, Any] = {"kind": "categorical", "dtype": str(column.dtype), "count": n, "missing": missing}
    if not n:
        return out
    if n < k:
        return out | {"suppressed": True}
    return out | _current_categories(values, counts, ref["categories"]["values"], k)
