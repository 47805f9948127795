"""The model card: evaluation metrics and permutation feature importance computed with the ONNX model itself
(what will be served), and the evaluation data's per-feature profile (summary statistics, small enough for the
metadata store). The drift reference (:func:`archipel.monitoring.drift.reference_profile`, quantile grids that
are close to raw values) is computed here too, on request, but is never part of the card: the caller stores it
in the model's site storage and the card records only a pointer to it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from archipel.registry.convert import Converted, convert, run_onnx

__all__ = [
    "describe",
    "drift_reference",
    "evaluate",
    "permutation_importance",
    "profile",
    "store_drift_reference",
]

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
BINS = 10


def profile(X: Any, feature_names: list[str] | None = None) -> dict[str, Any]:
    """Per feature: count, mean, std, min, max, quantiles and a histogram (its edges and counts)."""
    data = np.asarray(X, dtype=np.float64)
    names = feature_names or [f"f{i}" for i in range(data.shape[1])]
    features = {}
    for i, name in enumerate(names):
        column = data[:, i][np.isfinite(data[:, i])]
        if column.size == 0:
            features[name] = {"count": 0}
            continue
        counts, edges = np.histogram(column, bins=BINS)
        features[name] = {
            "count": int(column.size),
            "missing": int(len(data) - column.size),
            "mean": float(column.mean()),
            "std": float(column.std()),
            "min": float(column.min()),
            "max": float(column.max()),
            "quantiles": {
                str(q): float(v) for q, v in zip(QUANTILES, np.quantile(column, QUANTILES), strict=True)
            },
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        }
    return {"rows": len(data), "features": features}


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of a binary score (Mann-Whitney U with average ranks for ties)."""
    positive = y == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _predict(onnx: bytes, X: np.ndarray, signature: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """(predictions, probability of the positive class or None)."""
    outputs = run_onnx(onnx, X.astype(np.float32))
    names = [o["name"] for o in signature["outputs"]]
    if signature.get("task") == "classifier":
        labels, proba = outputs[names[0]], outputs[names[1]]
        positive = proba[:, 1] if proba.ndim == 2 and proba.shape[1] == 2 else None
        return labels.reshape(-1), positive
    first = outputs[names[0]]
    if signature.get("task") == "torch" and first.ndim == 2 and first.shape[1] > 1:
        return first.argmax(axis=1), (first[:, 1] if first.shape[1] == 2 else None)
    return first.reshape(len(X), -1)[:, 0], None


def _score(y: np.ndarray, predictions: np.ndarray, classify: bool) -> float:
    if classify:
        return float((predictions == y).mean())
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - predictions) ** 2).sum()) / total if total else 0.0


def evaluate(onnx: bytes, signature: dict[str, Any], X: Any, y: Any) -> dict[str, float]:
    """accuracy (and auc for a binary classifier) or rmse, mae and r2, from the ONNX model's outputs."""
    data, target = np.asarray(X, dtype=np.float32), np.asarray(y)
    predictions, positive = _predict(onnx, data, signature)
    if signature.get("task") in ("classifier", "torch") and target.dtype.kind in "iub":
        metrics = {"accuracy": float((predictions == target).mean())}
        if positive is not None and (auc := _auc(target, positive)) is not None:
            metrics["auc"] = auc
        return metrics
    error = target.astype(np.float64) - predictions.astype(np.float64)
    return {
        "rmse": float(np.sqrt((error**2).mean())),
        "mae": float(np.abs(error).mean()),
        "r2": _score(target.astype(np.float64), predictions.astype(np.float64), False),
    }


def permutation_importance(
    onnx: bytes, signature: dict[str, Any], X: Any, y: Any, *, repeats: int = 5, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per feature: the mean and std of the score drop when that feature's column is shuffled."""
    data, target = np.asarray(X, dtype=np.float32), np.asarray(y)
    classify = signature.get("task") in ("classifier", "torch") and target.dtype.kind in "iub"
    base = _score(target, _predict(onnx, data, signature)[0], classify)
    names = signature.get("feature_names") or [f"f{i}" for i in range(data.shape[1])]
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(names):
        drops = []
        for _ in range(repeats):
            shuffled = data.copy()
            shuffled[:, i] = rng.permutation(shuffled[:, i])
            drops.append(base - _score(target, _predict(onnx, shuffled, signature)[0], classify))
        out[name] = {"mean": float(np.mean(drops)), "std": float(np.std(drops))}
    return dict(sorted(out.items(), key=lambda item: -item[1]["mean"]))


def drift_reference(onnx: bytes, signature: dict[str, Any], X: Any) -> dict[str, Any]:
    """The drift reference of the evaluation rows ``X``: their features (named as in ``signature``) and the ONNX
    model's predictions on them (labels for a classifier, values for a regressor), as monitoring compares them
    with the rows a deployment serves. Close to raw values: it belongs next to the model, not in its card."""
    # monitoring.profiles imports QUANTILES from this module: importing it at the top would be circular
    from archipel.monitoring.profiles import reference_profile

    data = np.asarray(X, dtype=np.float32)
    names = signature.get("feature_names") or [f"f{i}" for i in range(data.shape[1])]
    return reference_profile(data, names, predictions=_predict(onnx, data, signature)[0])


def describe(
    model: Any,
    sample_input: Any,
    *,
    eval_data: tuple[Any, Any] | None = None,
    feature_names: list[str] | None = None,
    metrics: dict[str, float] | None = None,
) -> tuple[Converted, dict[str, float], dict[str, Any], dict[str, Any] | None]:
    """What registering a model takes: the checked ONNX conversion, its metrics (from ``eval_data`` with the
    ONNX model, then the caller's), its card (permutation importance and the evaluation data's profile), and the
    :func:`drift_reference` of ``eval_data``'s rows (None without it), which goes next to the ONNX in site storage
    (:func:`store_drift_reference`), never into the card."""
    converted = convert(model, sample_input, feature_names=feature_names)
    found = dict(metrics or {})
    card: dict[str, Any] = {}
    reference = None
    if eval_data is not None:
        X, y = eval_data
        found = {**evaluate(converted.onnx, converted.signature, X, y), **found}
        card["importance"] = permutation_importance(converted.onnx, converted.signature, X, y)
        card["profile"] = profile(X, converted.signature.get("feature_names"))
        reference = drift_reference(converted.onnx, converted.signature, X)
    return converted, found, card, reference


def store_drift_reference(store: Any, name: str, reference: dict[str, Any]) -> dict[str, Any]:
    """Store ``reference`` content-addressed next to the ONNX of model ``name`` in a site's ``store``; the pointer
    the card keeps (key, sha256, bytes)."""
    data = json.dumps(reference, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    sha = hashlib.sha256(data).hexdigest()
    key = f"models/{name}/{sha}.drift-reference.json"
    if not store.exists(key):
        store.put(key, data, expected_sha256=sha)
    return {"key": key, "sha256": sha, "bytes": len(data)}
