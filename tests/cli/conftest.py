"""Running the CLI in-process: exit code, stdout and stderr, as a user would see them."""

from __future__ import annotations

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
