"""``archipel models`` and ``runs compare`` through the CLI: a job logs its model, which is shown, gated,
promoted, replicated where allowed, used for predictions, tagged, archived and deleted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _train_job(tmp_path: Path) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "train.py").write_text((EXAMPLES / "train.py").read_text())
    (folder / "job.yaml").write_text(
        "name: train\nrun: python train.py\ninputs: [patients-eu]\noutputs: {model: {kind: artifact}}\n"
        'envs: {TRAIN_STEPS: "40"}\nconstraints: {sites: [onprem-frankfurt]}\n'
    )
    return folder / "job.yaml"


def test_models_from_a_run_to_a_prediction(
    capsys: pytest.CaptureFixture[str],
    ws_with_data: Any,
    tmp_path: Path,
) -> None:
    ws = ws_with_data
    w = ["--workspace", str(ws.root)]
    job = _train_job(tmp_path)
    runs = []
    for _ in range(2):
        code, out, err = run(capsys, *w, "run", str(job), "--yes", "--no-cache", "--json")
        assert code == 0, err
        runs.append(json.loads(out)["id"])
    code, out, _ = run(capsys, *w, "models", "ls", "--json")
    [model] = json.loads(out)
    assert model["name"] == "malignancy" and [v["version"] for v in model["versions"]] == [1, 2]
    code, out, _ = run(capsys, *w, "models", "show", "malignancy/1")
    assert code == 0 and runs[0] in out and "patients-eu@v1" in out and "conversion check" in out
    code, out, _ = run(capsys, *w, "runs", "compare", *runs, "--json")
    table = json.loads(out)
    assert table["runs"] == runs and table["params"]["steps"] == ["40", "40"]
    assert len(table["metrics"]["accuracy"]) == 2 and None not in table["metrics"]["accuracy"]

    # gates from archipel.yaml: version 1 passes, a worse registered file does not, and the clause is named
    ws.file.write_text(
        ws.file.read_text() + 'models:\n  malignancy:\n    gates: {production: ["accuracy >= 0.5"]}\n'
    )
    code, out, err = run(capsys, *w, "models", "promote", "malignancy", "1")
    assert code == 0 and "Promoted malignancy/1 to production" in out
    from archipel.db import connect
    from archipel.services.models import get_version, onnx_bytes

    engine = connect(ws.db_url)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(onnx_bytes(ws, get_version(engine, "malignancy/1")))
    code, out, err = run(capsys, *w, "models", "register", "malignancy", str(onnx), "--site", "onprem-frankfurt",
        "--data", "patients-eu", "--metric", "accuracy=0.1", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["version"] == 3
    code, _, err = run(capsys, *w, "models", "promote", "malignancy", "3")
    assert code == 5 and "accuracy >= 0.5" in err and "0.1" in err

    # replicas: allowed inside the EU, refused for the US before any byte, with the rule
    code, out, _ = run(capsys, *w, "models", "replicate", "malignancy@production", "--to", "gcp-europe-west4")
    assert code == 0 and "verified" in out
    code, _, err = run(capsys, *w, "models", "replicate", "malignancy@production", "--to", "aws-us-east-1")
    assert code == 5 and "default-personal-data-residency" in err
    assert list(ws.storage("aws-us-east-1").list("models/")) == []

    rows = tmp_path / "rows.json"  # the mean measurements of the first tumour in scikit-learn's table
    rows.write_text(json.dumps([{"mean_radius": 17.99, "mean_texture": 10.38, "mean_perimeter": 122.8,
        "mean_area": 1001.0, "mean_smoothness": 0.1184, "mean_compactness": 0.2776, "mean_concavity": 0.3001,
        "mean_concave_points": 0.1471, "mean_symmetry": 0.2419, "mean_fractal_dimension": 0.07871}]))  # fmt: skip
    code, out, err = run(capsys, *w, "models", "predict", "malignancy@production", "--input", str(rows))
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == "malignancy/1" and len(result["outputs"]["probabilities"][0]) == 2

    # habits: aliases, rollback, tags, archive, delete
    assert run(capsys, *w, "models", "alias", "malignancy", "staging", "3")[0] == 0
    code, _, err = run(capsys, *w, "models", "archive", "malignancy/3")
    assert code == 4 and "staging" in err
    assert run(capsys, *w, "models", "alias", "malignancy", "staging", "--remove")[0] == 0
    assert run(capsys, *w, "models", "tag", "malignancy/3", "reviewed=no", "--description", "bad")[0] == 0
    assert run(capsys, *w, "models", "archive", "malignancy/3")[0] == 0
    assert run(capsys, *w, "models", "delete", "malignancy/3", "--yes")[0] == 0
    code, out, _ = run(capsys, *w, "models", "show", "malignancy", "--json")
    assert [v["version"] for v in json.loads(out)["versions"]] == [1, 2]
    assert run(capsys, *w, "models", "promote", "malignancy", "2")[0] == 0
    code, out, _ = run(capsys, *w, "models", "rollback", "malignancy")
    assert code == 0 and "2 -> 1" in out
    engine.dispose()
