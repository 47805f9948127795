"""`archipel plan` as a user runs it: tables, --json, -o, and spec errors with file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from archipel.db import connect
from archipel.services.data import add_dataset
from tests.cli.conftest import run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def ws(demo_workspace, tmp_path: Path):
    engine = connect(demo_workspace.db_url)
    csv = tmp_path / "p.csv"
    csv.write_text("a,b\n1,2\n")
    add_dataset(demo_workspace, engine, "patients-eu", csv, site="onprem-frankfurt", classification="phi")
    add_dataset(demo_workspace, engine, "diagnosis-codes", csv, site="aws-us-east-1", classification="public")
    engine.dispose()
    return demo_workspace


def test_plan_the_examples_as_json_and_save(ws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "plan.json"
    code, out, err = run(
        capsys, "-w", str(ws.root), "plan", str(EXAMPLES / "train.yaml"), "--json", "-o", str(saved)
    )
    assert code == 0, err
    data = json.loads(out)
    assert data == json.loads(saved.read_text())
    (step,) = data["steps"]
    assert step["chosen"]["site"] in ("onprem-frankfurt", "gcp-europe-west4")
    assert {r["site"]: r["rule"] for r in step["rejections"]} == {
        "aws-us-east-1": "default-personal-data-residency"
    }
    assert (
        data["pins"]["patients-eu@v1"]["replicas"] == ["onprem-frankfurt"] and len(data["fingerprint"]) == 64
    )
    code, out, err = run(capsys, "-w", str(ws.root), "plan", str(EXAMPLES / "pipeline.yaml"))
    assert code == 0, err
    assert "Step prepare" in out and "Step train" in out and "Step report" in out


def test_a_typo_in_a_job_names_the_file_line_and_keys(ws, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "job.yaml"
    shutil.copy(EXAMPLES / "train.yaml", bad)
    bad.write_text(bad.read_text().replace("estimate: 2h", "estimte: 2h"))
    code, _, err = run(capsys, "-w", str(ws.root), "plan", str(bad))
    assert code == 2
    assert f"{bad}:" in err and "estimte" in err and "estimate" in err and "Traceback" not in err


def test_a_job_nobody_may_run_exits_with_the_policy_code(ws, tmp_path: Path, capsys) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nrun: x\ninputs: [patients-eu]\nconstraints: {jurisdictions: [US]}\n")
    code, _, err = run(capsys, "-w", str(ws.root), "plan", str(job))
    assert code == 8 and "no site can run step t" in err  # NoCapacity: constraints and policy together
    job.write_text("name: t\nrun: x\ninputs: [patients-eu]\nconstraints: {sites: [aws-us-east-1]}\n")
    code, _, err = run(capsys, "-w", str(ws.root), "plan", str(job))
    assert code == 8
