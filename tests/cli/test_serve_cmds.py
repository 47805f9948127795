"""The serving commands as a user types them: `deploy examples/deployment.yaml`, `deployments ls|status|rollback|down`,
`tokens create|ls|revoke`, and `gateway` as a process answering an infer with the token, until it is revoked."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from archipel.data.samples import LABEL, MEAN_FEATURES, write_patients_csvs
from tests.cli.conftest import run
from tests.serving.conftest import stop, wait_listening

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deployment.yaml"
FEATURES = list(MEAN_FEATURES)  # what examples/train.py trains malignancy on


def _register(ws: Any, engine: Any, rows: np.ndarray, y: np.ndarray, c: float) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from archipel.registry.convert import convert
    from archipel.services.models import promote, register_version

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(rows, y)
    version = register_version(ws, engine, "malignancy", convert(model, rows[:32], feature_names=FEATURES),
                               site="onprem-frankfurt", datasets=["patients-eu"])  # fmt: skip
    promote(ws, engine, "malignancy", version.version, gates=[])
    return version.version


def test_deploy_serve_through_the_gateway_revoke_roll_back_and_stop(
    demo_workspace: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from archipel.db import connect
    from archipel.errors import NotFound
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.data import add_dataset, read_dataset
    from archipel.services.deployments import down

    ws = demo_workspace
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    add_dataset(ws, engine, "patients-eu", write_patients_csvs(tmp_path / "patients")["patients-eu"],
                site="onprem-frankfurt", classification="phi")  # fmt: skip
    table = read_dataset(ws, engine, "patients-eu")
    rows = np.column_stack([table.column(f).to_numpy() for f in FEATURES]).astype(np.float32)
    y = table.column(LABEL).to_numpy()
    assert _register(ws, engine, rows, y, 1.0) == 1
    spec = tmp_path / "deployment.yaml"
    shutil.copy(EXAMPLE, spec)
    gateway = None
    try:
        code, out, err = run(capsys, "--workspace", str(ws.root), "deploy", str(spec), "--json")
        assert code == 0, err
        deployed = json.loads(out)
        assert deployed["version"] == 1 and sorted(r["site"] for r in deployed["replicas"]) == [
            "gcp-europe-west4",
            "onprem-frankfurt",
        ]  # fmt: skip  (auto: the EU sites phi may be used at)
        code, out, _ = run(capsys, "--workspace", str(ws.root), "deployments", "ls")
        assert code == 0 and "malignancy" in out and "$/h" in out
        code, out, err = run(
            capsys,
            "--workspace",
            str(ws.root),
            "tokens",
            "create",
            "--scope",
            "infer",
            "--origin",
            "EU",
            "--name",
            "cli",
        )
        assert code == 0, err
        token = out.strip().splitlines()[-1]
        code, out, _ = run(capsys, "--workspace", str(ws.root), "tokens", "ls", "--json")
        (listed,) = json.loads(out)
        assert (listed["name"], listed["scope"], listed["origins"]) == ("cli", "infer", ["EU"])
        assert token not in out  # never the secret
        gateway = subprocess.Popen(
            [sys.executable, "-m", "archipel.cli", "--workspace", str(ws.root), "gateway", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{wait_listening(gateway)}/v2/models/malignancy/infer"
        headers = {"Authorization": f"Bearer {token}", "X-Archipel-Origin": "EU"}
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, len(FEATURES)],
                    "datatype": "FP32",
                    "data": rows[:2].ravel().tolist(),
                }
            ]
        }
        deadline = time.monotonic() + 20
        while (answer := httpx.post(url, json=body, headers=headers)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.05)
        assert answer.json()["model_version"] == "1" and answer.headers["x-archipel-site"] in (
            "gcp-europe-west4", "onprem-frankfurt")  # fmt: skip

        assert _register(ws, engine, rows, y, 0.01) == 2  # a new production version, rolled out by deploy
        code, out, err = run(capsys, "--workspace", str(ws.root), "deploy", str(spec), "--json")
        assert code == 0 and json.loads(out)["version"] == 2, err
        code, out, err = run(capsys, "--workspace", str(ws.root), "deployments", "rollback", "malignancy")
        assert code == 0 and "malignancy/1" in out, err
        code, out, _ = run(
            capsys, "--workspace", str(ws.root), "deployments", "status", "malignancy", "--json"
        )
        assert json.loads(out)["version"] == 1

        code, out, err = run(capsys, "--workspace", str(ws.root), "tokens", "revoke", listed["id"])
        assert code == 0 and listed["id"] in out, err
        deadline = time.monotonic() + 10  # gateways cache a verified token for 5 s
        while httpx.post(url, json=body, headers=headers).status_code != 401:
            assert time.monotonic() < deadline, "the revoked token is still served"
            time.sleep(0.1)
        code, out, err = run(capsys, "--workspace", str(ws.root), "deployments", "down", "malignancy")
        assert code == 0 and "down" in out, err
    finally:
        if gateway is not None:
            stop(gateway)
        with contextlib.suppress(
            NotFound
        ):  # (stops the replicas if the test failed before `deployments down`)
            down(ws, engine, "malignancy")
        engine.dispose()
