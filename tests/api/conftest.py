"""What the API's tests share: a workspace with data, and `archipel server --port 0` as a process over it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.serving.conftest import stop, wait_listening


def api_workspace(root: Path) -> Any:
    """A demo workspace (three local sites, applied) at ``root/ws`` holding the 341 EU patients of
    :mod:`archipel.data.samples` as ``patients-eu`` (``phi``)."""
    from archipel.data.samples import write_patients_csvs
    from archipel.db import connect
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.data import add_dataset
    from archipel.services.init import init_workspace

    ws = init_workspace(root / "ws", demo=True)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    csv = write_patients_csvs(root / "patients")["patients-eu"]
    add_dataset(ws, engine, "patients-eu", csv, site="onprem-frankfurt", classification="phi")
    engine.dispose()
    return ws


def tokens_for(ws: Any, *scopes: str, name: str) -> dict[str, str]:
    """A new token of each scope: scope -> the whole token."""
    from archipel.db import connect
    from archipel.services.tokens import create_token

    engine = connect(ws.db_url)
    try:
        return {scope: create_token(ws, engine, scope=scope, name=f"{name}-{scope}")[0] for scope in scopes}
    finally:
        engine.dispose()


def start_server(ws_root: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`archipel -w WS server --port 0` and its URL, once its health route answers."""
    proc = subprocess.Popen([sys.executable, "-m", "archipel.cli", "-w", str(ws_root), "server", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        return proc, f"http://127.0.0.1:{wait_listening(proc, path='/api/health')}"
    except BaseException:
        stop(proc)
        raise
