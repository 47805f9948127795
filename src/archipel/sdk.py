"""Functions for user code (notebooks, scripts, jobs): the same services the CLI calls, with plain arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["read_dataset"]


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
