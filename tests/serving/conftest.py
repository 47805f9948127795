"""A registered breast-cancer GradientBoosting model and a real replica process serving it on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[str]
    secret: str | None
    X: np.ndarray
    model: Any
    feature_names: list[str]

    def headers(self) -> dict[str, str]:
        return {"X-Archipel-Replica-Secret": self.secret} if self.secret else {}


@pytest.fixture(scope="module")
def served_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, np.ndarray, Any, list[str]]]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    from archipel.db import connect
    from archipel.registry.convert import convert
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.init import init_workspace
    from archipel.services.models import register_version

    root = tmp_path_factory.mktemp("serving")
    ws = init_workspace(root / "ws", demo=True)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    data = load_breast_cancer(as_frame=True)
    X, y = data.data.astype(np.float32), data.target
    names = [c.replace(" ", "_") for c in X.columns]
    X.columns = names
    rows = X.to_numpy()
    model = GradientBoostingClassifier(n_estimators=50, random_state=0).fit(rows, y)
    converted = convert(model, rows[:64], feature_names=names)
    register_version(ws, engine, "cancer", converted, site="gcp-europe-west4")
    engine.dispose()
    yield ws.root, X.to_numpy(), model, names


def start_replica(
    root: Path, *, secret: str | None = None, extra: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    env = {**os.environ, "ARCHIPEL_WORKSPACE": str(root)}
    args = [sys.executable, "-m", "archipel.cli", "serve-replica", "cancer/1",
            "--site", "gcp-europe-west4", *extra]  # fmt: skip
    if secret:
        env["TEST_REPLICA_SECRET"] = secret
        args += ["--secret-env", "TEST_REPLICA_SECRET"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=10)  # drains and closes the pipes
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def wait_listening(proc: subprocess.Popen[str], timeout: float = 60.0, path: str = "/v2/health/ready") -> int:
    """The port a process printed first (``LISTENING PORT``), once ``path`` answers 200 there."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    assert line.startswith("LISTENING"), (
        line,
        proc.stderr.read() if proc.poll() is not None and proc.stderr else "",
    )
    port = int(line.split()[1])
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
                if response.status == 200:
                    return port
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{path} never answered 200 on port {port}")


@pytest.fixture(scope="module")
def replica(served_model: tuple[Path, np.ndarray, Any, list[str]]) -> Iterator[Replica]:
    root, X, model, names = served_model
    proc = start_replica(root, secret="s3cret-for-gateways", extra=("--max-body-mb", "1"))
    port = wait_listening(proc)
    yield Replica(f"http://127.0.0.1:{port}", proc, "s3cret-for-gateways", X, model, names)
    stop(proc)
