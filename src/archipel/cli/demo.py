"""``archipel demo``: the whole story, on local sites standing in for clouds.

1. an archipelago of sites in two jurisdictions, checked for real, with catalog prices;
2. patient records under residency rules: verified replication where allowed, refusals where not;
3. a pipeline placed by residency, egress and price, with the cheaper site it may not use;
4. training with checkpoints, a worker killed and the run resumed from its last checkpoint;
5. the model registered as ONNX with lineage, gated to production, copied only where its data allows;
6. served at two sites behind one gateway while one of them is killed: no request fails, none leaves the EU;
7. drift found at the one site whose traffic shifted, the model retrained, gated and rolled out;
8. the cost ledger by site and provider, and the audit log verified.

Every figure printed is computed here and written to a JSON summary that the demo's test cross-checks against the
ledger, the audit log and the replicas' own counters. ``fast`` shortens the waits (training, traffic) for tests;
``keep_running`` leaves the model served behind a gateway when the story ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule
from sqlalchemy import Engine

from archipel.cli import render
from archipel.cli.demo_data import data_step
from archipel.cli.demo_ledger import ledger_step
from archipel.cli.demo_models import MODEL, PRODUCTION, models_step
from archipel.cli.demo_monitor import monitor_step
from archipel.cli.demo_plan import plan_step
from archipel.cli.demo_run import run_step
from archipel.cli.demo_serve import serve_step
from archipel.cli.demo_sites import DEMO_REQUEST, sites_step
from archipel.db import connect
from archipel.services.apply import apply_plan, plan_apply
from archipel.services.init import init_workspace
from archipel.workspace import Workspace

__all__ = ["DEMO_REQUEST", "STEPS", "run_demo"]

Step = Callable[[Workspace, Engine, Console, dict[str, Any]], tuple[dict[str, Any], dict[str, bool]]]

STEPS: list[tuple[str, str, Step]] = [
    ("sites", "An archipelago of sites in two jurisdictions, with real catalog prices",
     lambda ws, e, out, ctx: sites_step(ws, e, out)),
    ("data", "Data has a home, and a jurisdiction", lambda ws, e, out, ctx: data_step(ws, e, out)),
    ("plan", "Where each step goes, and why", lambda ws, e, out, ctx: plan_step(ws, e, out)),
    ("run", "Train where the plan says; a worker dies and the run resumes from its checkpoint",
     lambda ws, e, out, ctx: run_step(ws, e, out, fast=ctx["fast"])),
    ("models", "The model: ONNX with lineage, a gate to production, copies only where its data allows",
     lambda ws, e, out, ctx: models_step(ws, e, out, ctx["run"]["run_id"])),
    ("serving", "Serving: one gateway over two EU sites, one of them killed mid-traffic",
     lambda ws, e, out, ctx: serve_step(ws, e, out, fast=ctx["fast"])),
    ("monitoring", "Drift where the data lives: found at one site, retrained, gated, rolled out",
     lambda ws, e, out, ctx: monitor_step(ws, e, out)),
    ("ledger", "What it all cost, and the audit trail", lambda ws, e, out, ctx: ledger_step(ws, e, out)),
]  # fmt: skip
"""(summary key, title, step): the story in order; each step returns its figures and its checks."""

NEXT = (
    ("what is where", "sites ls", "data ls", "data show patients-eu", f"models show {MODEL}"),
    (
        "why",
        "policy check --data patients-eu --site aws-us-east-1",
        "audit ls --action policy.",
        "audit verify",
    ),
    ("what ran", "runs ls", "runs show RUN", "monitor status", "triggers ls"),
    ("what it costs", "offers --cpus 4 --memory 16 --spot", "cost --by provider", "cost --by run"),
)
"""Commands to try in the demo's workspace, by the question they answer."""


def run_demo(
    root: Path | None, *, summary_path: Path | None = None, fast: bool = False, keep_running: bool = False
) -> bool:
    """Run every step; return True only if every step's check held."""
    out = render.console()
    started = time.perf_counter()
    root = root or Path(tempfile.mkdtemp(prefix="archipel-demo-"))
    summary: dict[str, Any] = {"workspace": str(root), "fast": fast, "steps": {}, "seconds_by_step": {}}
    checks: dict[str, bool] = {}
    workspace = init_workspace(root, demo=True, force=True)
    engine = connect(workspace.db_url)
    apply_plan(workspace, engine, plan_apply(workspace, engine))
    context: dict[str, Any] = {"fast": fast}
    for number, (key, title, step) in enumerate(STEPS, start=1):
        out.print(Rule(f"{number}. {title}"))
        at = time.perf_counter()
        figures, held = step(workspace, engine, out, context)
        context[key] = summary["steps"][key] = figures
        summary["seconds_by_step"][key] = round(time.perf_counter() - at, 2)
        checks.update(held)
    if keep_running:
        summary["kept_running"] = keep_serving(workspace, engine, out)
    summary["checks"] = checks
    summary["ok"] = all(checks.values())
    summary["seconds"] = round(time.perf_counter() - started, 2)
    path = summary_path or (workspace.state_dir / "demo-summary.json")
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    out.print(Rule("Where to look next"))
    out.print(f"Every figure above: {path}\nIn the workspace (archipel -w {workspace.root} COMMAND):")
    for question, *commands in NEXT:
        out.print(f"  {question + ':':<15}" + "  ·  ".join(commands))
    out.print(
        "The docs: README.md and docs/ (concepts, sites, policies, runs, models, serving, monitoring, security)"
    )
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        out.print(f"[red]demo checks failed: {', '.join(failed)}[/]")
    out.print(
        f"{'[green]All' if not failed else '[red]Not all'} {len(checks)} checks held[/] in {summary['seconds']:.0f} s."
    )
    return not failed


def keep_serving(workspace: Workspace, engine: Engine, out: Console) -> dict[str, Any]:
    """The production model served again at the EU sites behind a gateway, and the control plane's API and dashboard,
    both outliving the demo; their token goes to a file only the user can read (it is never printed)."""
    from archipel.cli.demo_serve import SITES
    from archipel.models.deployment import DeploymentSpec
    from archipel.services.deployments import deploy
    from archipel.services.tokens import create_token

    view = deploy(workspace, engine, DeploymentSpec(name=MODEL, model=PRODUCTION, sites=SITES))
    token = create_token(workspace, engine, scope="infer", name="demo-kept", origins=["EU"])[0]
    token_file = workspace.state_dir / "demo-token"
    token_file.touch(mode=0o600)
    token_file.write_text(token + "\n", encoding="utf-8")
    gateway, url = _detached(workspace, "gateway", "--port", "0")
    server, dashboard = _detached(workspace, "server", "--port", "0")
    out.print(
        f"Kept running: {MODEL} v{view.version} at {', '.join(r['site'] for r in view.replicas)} behind the "
        f"gateway at [bold]{url}[/] (pid {gateway.pid}); the control plane's API and dashboard at "
        f"[bold]{dashboard}[/] (pid {server.pid}). The token (scope infer, origin EU; it reads the dashboard too) "
        f"is in {token_file}, never printed:\n"
        f'  curl -H "Authorization: Bearer $(cat {token_file})" -H "X-Archipel-Origin: EU" '
        f"{url}/v2/models/{MODEL}\n"
        f"Stop them with: kill {gateway.pid} {server.pid}; archipel -w {workspace.root} deployments down {MODEL}"
    )
    return {"url": url, "gateway_pid": gateway.pid, "dashboard_url": dashboard, "server_pid": server.pid,
            "version": view.version, "token_file": str(token_file)}  # fmt: skip


def _detached(workspace: Workspace, *command: str) -> tuple[subprocess.Popen[bytes], str]:
    """``archipel COMMAND`` in its own session, outliving the demo, its output in ``.archipel/demo-COMMAND.log``;
    with the URL it listens at."""
    log_path = workspace.state_dir / f"demo-{command[0]}.log"
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "archipel.cli", "--workspace", str(workspace.root), *command],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{_listening_port(log_path, proc)}"


def _listening_port(log_path: Path, gateway: subprocess.Popen[bytes]) -> int:
    """The port a gateway or server prints once it listens (``LISTENING PORT``)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        first = log_path.read_text(encoding="utf-8").split("\n", 1)
        if len(first) > 1 and first[0].startswith("LISTENING"):
            return int(first[0].split()[1])
        if gateway.poll() is not None:
            raise RuntimeError(
                f"{log_path.name}: exited ({gateway.returncode}): {log_path.read_text()[-2000:]}"
            )
        time.sleep(0.05)
    os.kill(gateway.pid, 15)
    raise RuntimeError(f"{log_path.name}: not listening after 30 s")
