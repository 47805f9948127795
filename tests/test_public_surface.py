"""The public surface is deliberate, and `archipel --help` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import archipel
from archipel import errors

HEAVY = [
    "pyarrow",
    "pandas",
    "scipy",
    "numpy",
    "onnxruntime",
    "sklearn",
    "boto3",
    "botocore",
    "s3fs",
    "ray",
    "torch",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "pydantic",
    "yaml",
    "rich",
]


def test_pinned_all() -> None:
    assert archipel.__all__ == ["Client", "__version__", "job", "read_dataset", "register_model"]
    assert callable(archipel.register_model)
    assert callable(archipel.read_dataset)


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, json\n"
        "from archipel.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"archipel --help imported {loaded}"
    assert "Usage" in proc.stdout


def test_error_tables_cover_every_class() -> None:
    classes = [getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)]
    for klass in classes:
        err = klass("x")
        assert errors.exit_code_for(err) >= 1
        assert 400 <= errors.http_status_for(err) < 600
    assert errors.exit_code_for(errors.IntegrityError("x")) == errors.EXIT_CODE[errors.BackendError]
    assert errors.http_status_for(errors.NotFound("x")) == 404
    assert errors.http_status_for(ValueError("x")) == 500
    assert errors.exit_code_for(KeyError("x")) == 1
    assert (
        len(set(errors.EXIT_CODE.values())) == len(errors.EXIT_CODE) - 2
    )  # SpecError/UserError, Forbidden/Unauthorized
