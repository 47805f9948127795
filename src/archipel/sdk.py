"""Functions for user code (notebooks, scripts, jobs): the same services the CLI calls, with plain arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["read_dataset", "register_model"]


def read_dataset(
    ref: str, *, site: str | None = None, workspace: str | Path | None = None, as_pandas: bool = False
) -> Any:
    """Dataset ``NAME`` or ``NAME@vN`` as a pyarrow Table (or a pandas DataFrame with ``as_pandas=True``).

    Read at ``site`` (default ``$ARCHIPEL_SITE``, else the dataset's home site) from the nearest replica, if the
    policies allow the data to be processed there; otherwise :class:`archipel.errors.PolicyViolation`. The
    decision is recorded in the audit log like any other.
    """
    import os

    from archipel.db import connect
    from archipel.services.data import read_dataset as _read
    from archipel.workspace import load_workspace

    ws = load_workspace(Path(workspace) if workspace is not None else None)
    engine = connect(ws.db_url)
    try:
        return _read(
            ws, engine, ref, at_site=site or os.environ.get("ARCHIPEL_SITE") or None, as_pandas=as_pandas
        )
    finally:
        engine.dispose()


def register_model(
    name: str,
    model: Any,
    *,
    sample_input: Any,
    site: str,
    datasets: list[str] | None = None,
    eval_data: tuple[Any, Any] | None = None,
    feature_names: list[str] | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    description: str = "",
    workspace: str | Path | None = None,
) -> dict[str, Any]:
    """Register a scikit-learn estimator or pipeline, a PyTorch module, or ONNX bytes/file as the next version
    of ``name`` at ``site`` (outside a job; inside one use ``archipel.job.context().log_model``).

    The conversion to ONNX is checked against the model on ``sample_input``; ``eval_data=(X, y)`` adds metrics,
    permutation importance and the data profile to the model card; ``datasets`` are its training data (lineage and
    residency). Returns the version as a dict (``ref``, ``version``, ``sha256``, ``metrics``, ...)."""
    from archipel.db import connect
    from archipel.registry.card import describe
    from archipel.services.models import register_version
    from archipel.workspace import load_workspace

    converted, found, card, reference = describe(
        model, sample_input, eval_data=eval_data, feature_names=feature_names, metrics=metrics
    )
    ws = load_workspace(Path(workspace) if workspace is not None else None)
    engine = connect(ws.db_url)
    try:
        version = register_version(ws, engine, name, converted, site=site, datasets=datasets or [], metrics=found,
            params=params, card=card, description=description, drift_reference=reference)  # fmt: skip
        return version.as_json()
    finally:
        engine.dispose()
