"""One ``archipel demo --fast --keep-running`` for the whole test session (the ``demo_run`` fixture).

The demo's own test (tests/integration/test_demo.py) checks every figure it printed; the dashboard's test
(tests/api/test_dashboard.py) reads the pages over the workspace it filled. Running it once saves a demo run
(~30 s here). The demo runs as `make demo` installs archipel: without pandas. What it kept running (a gateway in
front of two replicas, and a control-plane server) is stopped when the session ends, and the deployment taken down.
Tests that change the workspace work on a copy (``DemoRun.copy``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

WITHOUT_PANDAS = """
import sys
class NoPandas:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
sys.meta_path.insert(0, NoPandas())
from archipel.cli.main import main
main(sys.argv[1:])
"""


@dataclass(frozen=True)
class DemoRun:
    """The demo's workspace folder, what it printed, its JSON summary, and the environment it ran in."""

    root: Path
    stdout: str
    summary: dict[str, Any]
    env: dict[str, str]

    @property
    def kept(self) -> dict[str, Any]:
        return self.summary["kept_running"]

    def copy(self, dest: Path) -> Path:
        """A workspace of its own holding what the demo left (the metadata store copied through SQLite's backup,
        consistent while the kept processes write), for tests that add to it: the demo's test checks figures that
        a new budget or run would change. Its deployment's replicas are the demo's: read them, never stop them."""
        import shutil
        import sqlite3

        shutil.copytree(self.root, dest, ignore=shutil.ignore_patterns("archipel.db", "archipel.db-*"))
        with (
            sqlite3.connect(self.root / ".archipel" / "archipel.db") as src,
            sqlite3.connect(dest / ".archipel" / "archipel.db") as dst,
        ):
            src.backup(dst)
        return dest


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    root = tmp_path_factory.mktemp("demo") / "ws"
    env = {
        **os.environ,
        "COLUMNS": "160",
        "NO_COLOR": "1",
        "ARCHIPEL_HOME": str(tmp_path_factory.mktemp("home")),
    }
    for var in ("ARCHIPEL_WORKSPACE", "ARCHIPEL_DB_URL", "ARCHIPEL_URL", "ARCHIPEL_TOKEN"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_PANDAS, "demo", "--fast", "--keep-running", "--workspace", str(root)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    summary_file = root / ".archipel" / "demo-summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    try:
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
        yield DemoRun(root, proc.stdout, summary, env)
    finally:
        kept = summary.get("kept_running", {})
        for pid in (kept.get("server_pid"), kept.get("gateway_pid")):
            end(pid)
        if kept:
            subprocess.run([sys.executable, "-m", "archipel.cli", "-w", str(root), "deployments", "down",
                            "malignancy"], capture_output=True, env=env, timeout=120)  # fmt: skip


def end(pid: int | None) -> None:
    """SIGTERM a process the demo left running (not a child of this one) and wait until it is gone (or a zombie)."""
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    stat = Path(f"/proc/{pid}/stat")
    while time.monotonic() < deadline:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
