"""A demo workspace with an EU-only ``phi`` dataset, and helpers to plan, submit and drive runs."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def runs_ws(demo_workspace: Any, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    from archipel.data.samples import write_patients_csvs
    from archipel.db import connect
    from archipel.services.data import add_dataset

    engine = connect(demo_workspace.db_url)
    csv = write_patients_csvs(tmp_path / "patients")["patients-eu"]  # 341 breast-cancer records
    add_dataset(
        demo_workspace,
        engine,
        "patients-eu",
        csv,
        site="onprem-frankfurt",
        classification="phi",
        jurisdiction="EU",
    )
    yield demo_workspace, engine
    engine.dispose()


def write_job(folder: Path, text: str, *, scripts: tuple[str, ...] = ("train.py",)) -> Path:
    """A job spec in ``folder`` next to copies of the example scripts it runs."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in scripts:
        (folder / name).write_text((EXAMPLES / name).read_text())
    path = folder / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def submit(ws: Any, engine: Any, spec_path: Path, *, reuse: bool = True) -> str:
    from archipel.services.plan import load_plan_spec, make_plan
    from archipel.services.runs import submit_run

    result = make_plan(ws, engine, load_plan_spec(spec_path))
    return submit_run(ws, engine, result, workdir=spec_path.parent, reuse=reuse)
