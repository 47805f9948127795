"""Data drift between a model's reference data (its training or evaluation set) and the rows it serves.

Three steps, each a pure function of arrays and dicts (no storage, no database, no pandas):

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
* :func:`detect`, anywhere: per feature a test, its score, threshold, verdict and sample size, PSI for every
  feature, dataset drift when the share of drifted features reaches ``drift_share``, predictions apart.

Tests and thresholds are Evidently's defaults (``_get_default_stattest`` in its ``stattests/registry.py``): up to
1000 rows, Kolmogorov-Smirnov for numeric features (drifted at p <= 0.05) and chi-squared for categorical ones
(p < 0.05; a Z-test of two proportions when reference and current hold at most two values together); above,
the Wasserstein distance normed by the reference's std (>= 0.1) and the Jensen-Shannon distance (natural log,
>= 0.1). Numeric features with at most five distinct values, reference and current together, are tested as
categorical. Evidently counts the *reference's* rows to choose; ``DriftConfig.select_by`` defaults to the smaller
of the two samples: the current window when the reference is a large training set (over 200 served rows, the
sampling noise of either distance is of the order of its 0.1 threshold; a p-value is calibrated) and the
reference when that is small, as in Evidently. ``select_by="reference"`` is Evidently's rule exactly.

Approximations. Both sides are rounded to float32 first, the precision the ONNX model sees, so a float64
training set and the float32 rows served compare value for value (integers past 2**24 lose their last digits).
The reference is 1000 atoms of mass 1/1000 at
the midpoints of consecutive grid values (inverted-CDF order statistics at levels 0, 0.001, ..., 1; a tie puts
its atom exactly on the tied value); the current sample is its centroids (a cell holding one value puts it
exactly there). KS's D is the largest gap between the two atomic CDFs: it differs from the D that
``scipy.stats.ks_2samp`` finds on the raw data by at most 1/1000 (one reference atom) plus the largest share of
current rows collapsed into one centroid (measured: within 0.001 for 300 to 1000 served rows; tested to 0.002).
Its p-value is ``scipy.stats.kstwo.sf(D, round(n*m/(n+m)))`` with the real row counts n and m, what ``ks_2samp``
computes in its asymptotic mode (tested within 0.05 of its p-value, exact mode included). The Wasserstein
distance is the integral of the same gap (tested within 0.005 of ``scipy.stats.wasserstein_distance``, normed);
centroids keep each cell's mean, so values beyond the reference's range count exactly. PSI bins are the
reference's deciles (categories for categorical features), empty shares replaced by 1e-4; for continuous
features the Jensen-Shannon distance, when asked for, uses them too.

Missing values (NaN, and +-inf for numeric features; None for object columns) are counted and reported as a
share, never compared as values; ``DriftConfig.missing_share_delta`` also flags a change of that share (off by
default, as in Evidently, which drops them). A feature with values on one side only drifted (test
``"missing"``); one with too few rows to leave its site is not tested (test ``"none"``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from archipel.errors import SpecError
from archipel.registry.card import QUANTILES

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DriftConfig",
    "DriftReport",
    "FeatureDrift",
    "SchemaSkew",
    "TypeChange",
    "current_profile",
    "detect",
    "reference_profile",
    "schema_skew",
]

Method = Literal["ks", "wasserstein", "psi", "chisquare", "z", "jensenshannon"]
METHODS = ("ks", "wasserstein", "psi", "chisquare", "z", "jensenshannon")
DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "ks": 0.05, "chisquare": 0.05, "z": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1,
}  # fmt: skip
GRID_LEVELS = 1001
PSI_BINS = 10
PSI_EPSILON = 1e-4
DISCRETE_VALUES = 5  # Evidently: a numeric feature with at most this many values is tested as categorical
MAX_CATEGORIES = 100
REFERENCE_FORMAT = "archipel.drift.reference/1"
CURRENT_FORMAT = "archipel.drift.current/1"
_STEP = (GRID_LEVELS - 1) // PSI_BINS
_TYPE_CLASSES = {
    "b": "bool",
    "i": "integer",
    "u": "integer",
    "f": "float",
    "U": "text",
    "S": "text",
    "O": "object",
}


@dataclass(frozen=True)
class DriftConfig:
    """How :func:`detect` chooses its tests and judges them. A feature's method is ``feature_methods[name]``,
    else ``numeric_method``/``categorical_method``, else the default choice; its threshold
    ``feature_thresholds[name]``, else ``thresholds[method]``, else ``DEFAULT_THRESHOLDS[method]``. The spec
    layer validates what users write and builds this."""

    drift_share: float = 0.5
    """Dataset drift when at least this share of the features drifted."""
    small_sample_rows: int = 1000
    """Up to this many rows, p-value tests (KS, chi-squared, Z); above, distances (Wasserstein, Jensen-Shannon)."""
    select_by: Literal["smaller", "current", "reference"] = "smaller"
    """Whose row count is compared with ``small_sample_rows``; Evidently's is ``"reference"``."""
    numeric_method: Method | None = None
    categorical_method: Method | None = None
    feature_methods: Mapping[str, Method] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    feature_thresholds: Mapping[str, float] = field(default_factory=dict)
    missing_share_delta: float | None = None
    """Also flag a feature whose share of missing values moved by more than this."""

    def __post_init__(self) -> None:
        if not 0 < self.drift_share <= 1:
            raise SpecError(f"drift_share {self.drift_share} is not in (0, 1]")
        if self.select_by not in ("smaller", "current", "reference"):
            raise SpecError(f"select_by {self.select_by!r} is not one of 'smaller', 'current', 'reference'")
        named = {"numeric_method": self.numeric_method, "categorical_method": self.categorical_method}
        named |= {f"feature_methods[{k!r}]": v for k, v in self.feature_methods.items()}
        named |= {f"thresholds[{k!r}]": k for k in self.thresholds}
        for where, method in named.items():
            if method is not None and method not in METHODS:
                raise SpecError(f"{where}: unknown drift method {method!r}; known: {', '.join(METHODS)}")
        for where, value in {**self.thresholds, **self.feature_thresholds}.items():
            if not (isinstance(value, int | float) and value >= 0):
                raise SpecError(f"threshold for {where!r} is {value!r}, not a number >= 0")
        if self.missing_share_delta is not None and not 0 <= self.missing_share_delta <= 1:
            raise SpecError(f"missing_share_delta {self.missing_share_delta} is not in [0, 1]")

    def threshold(self, feature: str, method: str) -> float:
        if feature in self.feature_thresholds:
            return float(self.feature_thresholds[feature])
        return float(self.thresholds.get(method, DEFAULT_THRESHOLDS[method]))

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in vars(self).items()}


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's (or prediction's) verdict. ``score`` is the p-value of ``ks``, ``chisquare`` and ``z``
    (drifted below the threshold) or the distance (``wasserstein`` normed by the reference's std,
    ``jensenshannon``, ``psi``; drifted at or above it); ``statistic`` is KS's D, the chi-squared or z
    statistic, the raw Wasserstein distance or the distance again. ``test`` is ``"missing"`` when only one side
    has values, ``"none"`` when there is nothing to test. Row counts exclude missing values."""

    feature: str
    kind: Literal["numeric", "categorical"]
    test: str
    score: float | None
    threshold: float | None
    drifted: bool
    statistic: float | None = None
    psi: float | None = None
    reference_rows: int = 0
    current_rows: int = 0
    reference_missing_share: float = 0.0
    current_missing_share: float = 0.0
    missing_drifted: bool = False
    note: str | None = None


@dataclass(frozen=True)
class DriftReport:
    """The report :func:`detect` returns; ``to_dict()`` is JSON-ready (non-finite numbers become None)."""

    features: tuple[FeatureDrift, ...]
    predictions: tuple[FeatureDrift, ...]
    drift_share: float
    reference_rows: int
    current_rows: int
    config: dict[str, Any]

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def share_drifted(self) -> float:
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    @property
    def dataset_drift(self) -> bool:
        return bool(self.features) and self.share_drifted >= self.drift_share

    def feature(self, name: str) -> FeatureDrift:
        for f in (*self.features, *self.predictions):
            if f.feature == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "dataset_drift": self.dataset_drift,
                "share_drifted": self.share_drifted,
                "drifted_features": self.drifted_features,
                "drift_share": self.drift_share,
                "reference_rows": self.reference_rows,
                "current_rows": self.current_rows,
                "features": [asdict(f) for f in self.features],
                "predictions": [asdict(f) for f in self.predictions],
                "config": self.config,
            }
        )


@dataclass(frozen=True)
class TypeChange:
    """A feature whose type differs; ``breaking`` when numbers became text or the reverse."""

    feature: str
    reference: str
    current: str
    breaking: bool


@dataclass(frozen=True)
class SchemaSkew:
    """Training schema against serving schema: features ``missing`` from serving, ``extra`` ones, type changes,
    and whether the shared features come in another order (which matters for positional inputs)."""

    missing: tuple[str, ...]
    extra: tuple[str, ...]
    type_changes: tuple[TypeChange, ...]
    order_changed: bool

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.type_changes or self.order_changed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


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


def detect(
    reference: Mapping[str, Any],
    current: Any,
    config: DriftConfig | None = None,
    *,
    predictions: Any = None,
) -> DriftReport:
    """The drift report of ``current`` (a :func:`current_profile`, or raw rows as that takes them, with their
    ``predictions``) against ``reference``; dataset drift counts features only, predictions are reported
    apart."""
    _check_reference(reference)
    config = config or DriftConfig()
    if not _is(current, CURRENT_FORMAT):
        current = current_profile(current, reference, predictions=predictions)
    elif predictions is not None:
        raise SpecError("with a current profile, pass predictions to current_profile(), not to detect()")
    elif current.get("reference") != _digest(reference):
        raise SpecError("the current profile was computed against another reference profile")
    if missing := [n for n in reference["features"] if n not in current["features"]]:
        raise SpecError(f"the current profile lacks features {missing}")
    features = tuple(
        _feature_drift(n, f, current["features"][n], config) for n, f in reference["features"].items()
    )
    outputs = tuple(
        _feature_drift(n, f, current["predictions"][n], config)
        for n, f in reference.get("predictions", {}).items()
        if n in current.get("predictions", {})
    )
    return DriftReport(
        features, outputs, config.drift_share, reference["rows"], current["rows"], config.to_dict()
    )


def schema_skew(reference: Mapping[str, Any], current: Any) -> SchemaSkew:
    """Features missing from ``current``, extra ones and type changes. ``current`` is the serving schema: a
    mapping of feature name to dtype (numpy dtype or its name), a sequence of names (types unchecked) or a
    :func:`current_profile`."""
    _check_reference(reference)
    if _is(current, CURRENT_FORMAT):
        current = {n: f.get("dtype") for n, f in current["features"].items()}
    served: dict[str, Any] = dict(current) if isinstance(current, Mapping) else dict.fromkeys(current)
    ref = reference["features"]
    changes = []
    for name in (n for n in ref if n in served and served[n] is not None):
        before, after = _type_class(ref[name].get("dtype")), _type_class(served[name])
        if before != after:
            numbers = ("bool", "integer", "float")
            breaking = (before in numbers) != (after in numbers)
            changes.append(TypeChange(name, str(ref[name].get("dtype")), _dtype_name(served[name]), breaking))
    shared = [n for n in ref if n in served]
    return SchemaSkew(
        missing=tuple(n for n in ref if n not in served),
        extra=tuple(n for n in served if n not in ref),
        type_changes=tuple(changes),
        order_changed=shared != [n for n in served if n in ref],
    )


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


def _type_class(dtype: Any) -> str:
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return "text" if "str" in str(dtype).lower() else "other"
    return _TYPE_CLASSES.get(kind, "other")


def _dtype_name(dtype: Any) -> str:
    try:
        return str(np.dtype(dtype))
    except TypeError:
        return str(dtype)


def _pack(values: np.ndarray, dtype: Literal["f4", "f8", "u4"]) -> str:
    return f"{dtype}:" + base64.b64encode(np.ascontiguousarray(values, dtype="<" + dtype).tobytes()).decode(
        "ascii"
    )


def _unpack(text: str) -> np.ndarray:
    dtype, _, data = text.partition(":")
    if dtype not in ("f4", "f8", "u4"):
        raise SpecError(f"unknown packed array type {dtype!r}")
    return np.frombuffer(base64.b64decode(data), dtype="<" + dtype)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --- profiles ---------------------------------------------------------------------------------------------


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


# --- tests ------------------------------------------------------------------------------------------------


def _missing_share(entry: Mapping[str, Any]) -> float:
    total = entry["count"] + entry["missing"]
    return entry["missing"] / total if total else 0.0


def _feature_drift(
    name: str, ref: Mapping[str, Any], cur: Mapping[str, Any], config: DriftConfig
) -> FeatureDrift:
    kind, n_ref, n_cur = ref["kind"], int(ref["count"]), int(cur["count"])
    shares = _missing_share(ref), _missing_share(cur)
    delta = config.missing_share_delta
    base = {
        "feature": name,
        "kind": kind,
        "reference_rows": n_ref,
        "current_rows": n_cur,
        "reference_missing_share": shares[0],
        "current_missing_share": shares[1],
        "missing_drifted": delta is not None and abs(shares[1] - shares[0]) > delta,
    }
    if cur.get("suppressed"):
        return FeatureDrift(**base, test="none", score=None, threshold=None, drifted=base["missing_drifted"],
                            note="fewer rows than min_count_per_bin")  # fmt: skip
    if not (n_ref and n_cur):  # values on one side only: drifted; on neither: nothing to test
        one_sided = bool(n_ref or n_cur)
        note = f"no values in the {'current window' if n_ref else 'reference'}" if one_sided else "no values"
        return FeatureDrift(**base, test="missing" if one_sided else "none", score=None, threshold=None,
                            drifted=one_sided or base["missing_drifted"], note=note)  # fmt: skip
    counts = _category_counts(ref, cur) if "categories" in ref and "categories" in cur else None
    n_values = ref["distinct"] + cur.get("other_distinct", 0)
    discrete = counts is not None and (kind == "categorical" or n_values <= DISCRETE_VALUES)
    size = {"smaller": min(n_ref, n_cur), "current": n_cur, "reference": n_ref}[config.select_by]
    small = size <= config.small_sample_rows
    method = config.feature_methods.get(name) or (
        config.categorical_method if kind == "categorical" else config.numeric_method
    )
    if method is None and discrete:
        method = ("z" if n_values <= 2 else "chisquare") if small else "jensenshannon"
    elif method is None:
        method = "ks" if small else "wasserstein"
    if (method in ("ks", "wasserstein") and kind != "numeric") or (
        method in ("chisquare", "z") and not discrete
    ):
        raise SpecError(
            f"drift method {method!r} does not apply to feature {name!r} ({kind}"
            f"{'' if kind == 'categorical' else f', {n_values} distinct values'})"
        )
    atoms = None
    if kind == "numeric" and (not discrete or method in ("ks", "wasserstein")):
        atoms = _atoms(ref, cur)
    if not discrete or counts is None:
        counts = _decile_counts(ref, _atoms(ref, cur) if atoms is None else atoms)
    statistic, score = _statistic(method, counts, atoms, ref)
    threshold = config.threshold(name, method)
    if method in ("chisquare", "z"):
        drifted = score < threshold
    else:  # Evidently's comparisons: KS p <= threshold, distances >= threshold
        drifted = score <= threshold if method == "ks" else score >= threshold
    return FeatureDrift(
        **base,
        test=method,
        score=score,
        threshold=threshold,
        drifted=bool(drifted) or base["missing_drifted"],
        statistic=statistic,
        psi=_psi(*counts),
    )


Atoms = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _atoms(ref: Mapping[str, Any], cur: Mapping[str, Any]) -> Atoms:
    """(reference positions, masses, current positions, masses): 1000 atoms at the midpoints of consecutive
    reference grid values (the extreme two at the means of the reference's extreme 1/1000), and the current
    centroids."""
    grid = _unpack(ref["grid"]).astype(np.float64)
    at = (grid[:-1] + grid[1:]) / 2
    at[[0, -1]] = np.clip(ref["tails"], grid[[0, -2]], grid[[1, -1]])
    centroids = cur["centroids"]
    return (
        at,
        np.ones(len(grid) - 1),
        _unpack(centroids["means"]).astype(np.float64),
        _unpack(centroids["counts"]).astype(np.float64),
    )


def _decile_counts(ref: Mapping[str, Any], atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' mass in the bins between the reference's deciles (PSI's bins)."""
    deciles = np.unique(_unpack(ref["grid"])[_STEP : GRID_LEVELS - 1 : _STEP].astype(np.float64))
    r_at, r_mass, c_at, c_mass = atoms
    r = np.bincount(np.searchsorted(deciles, r_at, side="right"), weights=r_mass, minlength=len(deciles) + 1)
    c = np.bincount(np.searchsorted(deciles, c_at, side="right"), weights=c_mass, minlength=len(deciles) + 1)
    return r, c


def _category_counts(ref: Mapping[str, Any], cur: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Aligned counts: the reference's categories, then everything else; categories the site merged into its
    ``other_count`` are merged on the reference's side too."""
    r = np.asarray(ref["categories"]["counts"], dtype=np.float64)
    c = np.asarray(cur["categories"]["counts"], dtype=np.float64)
    if len(r) != len(c):
        raise SpecError("the current profile's categories do not match the reference's")
    fold = np.zeros(len(r), dtype=bool)
    fold[cur.get("merged", [])] = True
    r = np.append(np.where(fold, 0.0, r), ref.get("other_count", 0) + r[fold].sum())
    c = np.append(c, cur.get("other_count", 0))
    keep = (r > 0) | (c > 0)
    return r[keep], c[keep]


def _statistic(
    method: str, counts: tuple[np.ndarray, np.ndarray], atoms: Atoms | None, ref: Mapping[str, Any]
) -> tuple[float, float]:
    """(statistic, score) of one test."""
    r, c = counts
    if method in ("ks", "wasserstein"):
        assert atoms is not None
        n, m = float(ref["count"]), float(atoms[3].sum())
        position, gap = _cdf_gap(*atoms)
        if method == "ks":
            d = float(min(np.abs(gap).max(), 1.0))
            return d, float(np.clip(_stats().kstwo.sf(d, max(1, round(n * m / (n + m)))), 0.0, 1.0))
        distance = float(np.sum(np.abs(gap[:-1]) * np.diff(position)))
        return distance, distance / max(float(ref["std"]), 0.001)
    if method == "chisquare":
        expected = r * (c.sum() / r.sum())
        if np.any((expected == 0) & (c > 0)):
            return math.inf, 0.0
        chi2 = float(np.sum((c - expected) ** 2 / expected))
        return chi2, float(_stats().chi2.sf(chi2, len(r) - 1)) if len(r) > 1 else 1.0
    if method == "z":  # the share of the reference's most frequent value against the rest
        n1, n2 = r.sum(), c.sum()
        p1, p2 = 1 - r[0] / n1, 1 - c[0] / n2
        pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
        if len(r) < 2 or pooled in (0.0, 1.0):
            return 0.0, 1.0
        z = float((p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2)))
        return z, float(2 * _stats().norm.sf(abs(z)))
    distance = _jensenshannon(r, c) if method == "jensenshannon" else _psi(r, c)
    return distance, distance


def _stats() -> Any:
    """scipy.stats, which takes ~0.8 s to import: only the p-value tests need it, so they load it on first use."""
    import scipy.stats

    return scipy.stats


def _cdf_gap(
    a_at: np.ndarray, a_mass: np.ndarray, b_at: np.ndarray, b_mass: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct atom positions and F_a - F_b just after each (both normalised to total mass 1)."""
    at = np.concatenate((a_at, b_at))
    order = np.argsort(at, kind="stable")
    at = at[order]
    gap = np.cumsum(np.concatenate((a_mass / a_mass.sum(), -b_mass / b_mass.sum()))[order])
    last = np.append(at[1:] != at[:-1], True)
    return at[last], gap[last]


def _shares(counts: np.ndarray, floor: float = 0.0) -> np.ndarray:
    shares = counts / counts.sum()
    return np.where(shares == 0, floor, shares) if floor else shares


def _psi(r: np.ndarray, c: np.ndarray) -> float:
    p, q = _shares(r, PSI_EPSILON), _shares(c, PSI_EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


def _jensenshannon(r: np.ndarray, c: np.ndarray) -> float:
    p, q = _shares(r), _shares(c)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    return math.sqrt(max((kl(p) + kl(q)) / 2, 0.0))
