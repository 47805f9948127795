"""A demo workspace with EU ``phi`` data and models trained on it, on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture
def reg_ws(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    from archipel.data.samples import write_patients_csvs
    from archipel.db import connect
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.data import add_dataset
    from archipel.services.init import init_workspace

    monkeypatch.setenv("ARCHIPEL_DB_URL", db_url)
    ws = init_workspace(tmp_path / "ws", demo=True)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    csv = write_patients_csvs(tmp_path / "patients")["patients-eu"]
    add_dataset(ws, engine, "patients-eu", csv, site="onprem-frankfurt", classification="phi")
    yield ws, engine
    engine.dispose()


@pytest.fixture(scope="session")
def breast_cancer() -> tuple[Any, Any]:
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X.astype(np.float32), y
