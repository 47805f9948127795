"""Running the CLI in-process: exit code, stdout and stderr, as a user would see them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from archipel.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ws_with_data(demo_workspace: Any, tmp_path: Path) -> Any:
    from archipel.data.synthetic import write_patients_csv
    from archipel.db import connect
    from archipel.services.data import add_dataset

    engine = connect(demo_workspace.db_url)
    csv = write_patients_csv(tmp_path / "p.csv", 300, seed=3, id_prefix="eu")
    add_dataset(demo_workspace, engine, "patients-eu", csv, site="onprem-frankfurt", classification="phi")
    engine.dispose()
    return demo_workspace
