"""Data drift between a model's reference data (its training or evaluation set) and the rows it serves.

Three steps, each a pure function of arrays and dicts (no storage, no database, no pandas):

* :func:`reference_profile`, once, where the reference data is: per feature a summary, plus a quantile grid for
  numeric features and category counts for categorical ones. JSON-serializable.
* :func:`current_profile`, at the site, over a window of served rows, against the reference: the same summary,
  centroids between the reference's grid values, counts of its categories; with ``min_count_per_bin=k`` every
  number in it covers at least k rows. This is what leaves a site; raw rows never do.
* :func:`detect`, anywhere: per feature a test, its score, threshold, verdict and sample size, PSI for every
  feature, dataset drift when the share of drifted features reaches ``drift_share``, predictions apart.

The two profiles are built in :mod:`archipel.monitoring.profiles`, whose docstring details their contents and
what ``min_count_per_bin`` protects; this module re-exports both and holds the tests and the report.

Tests and thresholds are Evidently's defaults (``_get_default_stattest`` in its ``stattests/registry.py``): up to
1000 rows, Kolmogorov-Smirnov for numeric features (drifted at p <= 0.05) and chi-squared for categorical ones
(p < 0.05; a Z-test of two proportions when reference and current hold at most two values together); above,
the Wasserstein distance normed by the reference's std (>= 0.1) and the Jensen-Shannon distance (natural log,
>= 0.1). Numeric features with at most five distinct values, reference and current together, are tested as
categorical. Evidently counts the *reference's* rows to choose; ``DriftConfig.select_by`` defaults to the smaller
of the two samples: the current window when the reference is a large training set (over 200 served rows, the
sampling noise of either distance is of the order of its 0.1 threshold; a p-value is calibrated) and the
reference when that is small, as in Evidently. ``select_by="reference"`` is Evidently's rule exactly.

Approximations. Both sides are rounded to float32 first, by the profiles. The reference is 1000 atoms of mass
1/1000 at the midpoints of consecutive grid values (inverted-CDF order statistics at levels 0, 0.001, ..., 1; a
tie puts its atom exactly on the tied value); the current sample is its centroids (a cell holding one value puts
it exactly there). KS's D is the largest gap between the two atomic CDFs: it differs from the D that
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

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from archipel.errors import SpecError
from archipel.monitoring.profiles import (
    _STEP,
    CURRENT_FORMAT,
    DISCRETE_VALUES,
    GRID_LEVELS,
    _check_reference,
    _digest,
    _is,
    _unpack,
    current_profile,
    reference_profile,
)

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
PSI_EPSILON = 1e-4
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


# --- schema and report ------------------------------------------------------------------------------------


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


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
