"""``archipel run``, ``archipel runs``, ``archipel server`` and ``archipel chaos``: thin over the services."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from archipel.cli.common import JsonOpt, open_engine, open_workspace, print_json

runs_app = typer.Typer(help="List, inspect, follow and cancel runs.", no_args_is_help=True)
chaos_app = typer.Typer(help="Break a site on purpose to see recovery work.", no_args_is_help=True)

LEASE = "reconciler"
AUTOSCALE_S = 5.0


def _autoscale(ws, engine, seen: dict) -> None:
    """One autoscaling step for every deployment that asks for it (replicas.target_qps)."""
    import logging

    from archipel.errors import ArchipelError
    from archipel.services.deployments import autoscale, list_deployments

    for view in list_deployments(engine):
        if view.state != "down" and (view.spec.get("replicas") or {}).get("target_qps"):
            try:
                autoscale(ws, engine, view.name, seen=seen)
            except ArchipelError as exc:
                logging.getLogger("archipel.server").warning("autoscaling %s failed: %s", view.name, exc)


def run_command(
    spec: Annotated[Optional[Path], typer.Argument(help="A job or pipeline YAML file.")] = None,  # noqa: UP045
    plan_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--plan", help="Run exactly this saved plan (refused if anything changed since)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before launching.")] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once submitted.")] = False,
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Reuse the outputs of unchanged steps.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Give up following after this many seconds.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Plan, show the plan, and execute it at the chosen sites; follow it until it ends."""
    import json
    import sys

    from archipel.cli import render_plan, render_runs
    from archipel.errors import SpecError
    from archipel.services.plan import check_saved_plan, load_plan_spec, make_plan
    from archipel.services.runs import get_run, predict_cached, submit_run

    ws = open_workspace()
    engine = open_engine(ws)
    if plan_file is not None:
        try:
            saved = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpecError(f"{plan_file}: not a saved plan ({exc})") from None
        result = check_saved_plan(ws, engine, saved)
        workdir = Path(saved.get("workdir") or (spec.parent if spec else plan_file.parent)).resolve()
    elif spec is not None:
        result = make_plan(ws, engine, load_plan_spec(spec))
        workdir = spec.resolve().parent
    else:
        raise SpecError("give a job or pipeline file, or --plan PLAN.json")
    cached = predict_cached(engine, result, workdir=workdir) if cache else {}
    if not as_json:
        render_plan.plan(result)
        for step_name, earlier in cached.items():
            render_runs.console().print(
                f"[green]cached[/] {step_name}: unchanged since run {earlier}; its outputs are reused"
            )
        if not yes and sys.stdin.isatty() and not typer.confirm("Launch?", default=True):
            raise typer.Exit(1)
    run_id = submit_run(ws, engine, result, workdir=workdir, reuse=cache)
    if detach:
        started = _ensure_server(ws)
        if as_json:
            print_json({"run_id": run_id, "server_started": started})
        else:
            render_runs.console().print(
                f"Submitted [bold]{run_id}[/]"
                + (" (started a background server)" if started else "")
                + f". Follow it with: archipel runs logs {run_id} -f"
            )
        return
    state = _follow(ws, engine, run_id, quiet=as_json, timeout_s=timeout or None)
    view = get_run(engine, run_id)
    if as_json:
        print_json(view.as_json())
    else:
        render_runs.show(view)
    if state != "SUCCEEDED":
        raise typer.Exit(1)


def _ensure_server(ws) -> bool:
    """Start a background ``archipel server --exit-when-idle`` unless a reconciler holds the lease."""
    import subprocess
    import sys

    from archipel.executor.lease import holder_of

    if holder_of(open_engine(ws), LEASE) is not None:
        return False
    argv = [sys.executable, "-m", "archipel.cli", "--workspace", str(ws.root), "server", "--exit-when-idle"]
    with open(ws.state_dir / "server.log", "ab") as log:
        # through a shell that backgrounds it and exits: the server is nobody's child, so nothing waits for it
        subprocess.run(
            ["/bin/sh", "-c", '"$@" </dev/null &', "sh", *argv],
            stdout=log,
            stderr=log,
            start_new_session=True,
            check=True,
        )
    return True


def _follow(ws, engine, run_id: str, *, quiet: bool, timeout_s: float | None) -> str:
    """Drive the run with an embedded reconciler (or watch the server's), printing changes and logs."""
    import os

    from archipel.cli import render_runs
    from archipel.executor.lease import release, try_acquire
    from archipel.services.reconciler import POLL_S, Reconciler
    from archipel.services.runs import get_run, run_logs

    holder = f"cli-{os.getpid()}"
    reconciler = Reconciler(ws, engine)
    offsets: dict = {}
    seen: dict[str, str] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            if try_acquire(engine, LEASE, holder):
                reconciler.tick()
            view = get_run(engine, run_id, metrics=False)
            if not quiet:
                for step in view.steps:
                    line = f"{step['state']} {step['message']}"
                    if seen.get(step["step"]) != line:
                        seen[step["step"]] = line
                        render_runs.step_change(step)
                for step_name, number, text in run_logs(ws, engine, run_id, offsets=offsets):
                    render_runs.log_lines(step_name, number, text)
            if view.state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return view.state
            if deadline is not None and time.monotonic() > deadline:
                return view.state
            time.sleep(POLL_S)
    finally:
        reconciler.close()
        release(engine, LEASE, holder)


@runs_app.command("ls")
def runs_ls(
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Runs, newest first: state, steps, sites, cost."""
    from archipel.cli import render_runs
    from archipel.services.runs import list_runs

    ws = open_workspace()
    views = list_runs(open_engine(ws), limit=limit)
    if as_json:
        print_json([v.as_json() for v in views])
    else:
        render_runs.table(views)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")], as_json: JsonOpt = False
) -> None:
    """One run: steps, attempts (site, exit reason, cost), checkpoints, outputs, metrics."""
    from archipel.cli import render_runs
    from archipel.services.runs import get_run

    ws = open_workspace()
    view = get_run(open_engine(ws), run_id)
    if as_json:
        print_json(view.as_json())
    else:
        render_runs.show(view)


@runs_app.command("logs")
def runs_logs(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    step: Annotated[Optional[str], typer.Option(help="Only this step.")] = None,  # noqa: UP045
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
) -> None:
    """The output of every attempt of the run, in order."""
    from archipel.cli import render_runs
    from archipel.services.runs import follow_logs, run_logs

    ws = open_workspace()
    engine = open_engine(ws)
    chunks = follow_logs(ws, engine, run_id, step=step) if follow else run_logs(ws, engine, run_id, step=step)
    for step_name, number, text in chunks:
        render_runs.log_lines(step_name, number, text)


@runs_app.command("cancel")
def runs_cancel(run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]) -> None:
    """Stop the run: its running jobs are cancelled and it ends CANCELLED."""
    from archipel.cli import render_runs
    from archipel.services.runs import cancel_run

    ws = open_workspace()
    found = cancel_run(ws, open_engine(ws), run_id)
    render_runs.console().print(f"Cancel requested for {found}; the reconciler stops its jobs.")


def server_command(
    exit_when_idle: Annotated[
        bool,
        typer.Option("--exit-when-idle", help="Stop once no run is active (what `run --detach` starts)."),
    ] = False,
    port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--port", help="Also serve the REST API (OpenAPI at /docs) on this port (0: any free one)."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address for --port; beyond loopback only once a token exists.")
    ] = "127.0.0.1",
) -> None:
    """The control process: reconciles runs (supervision, recovery), autoscales deployments and checks them for
    drift and service levels (each deployment's monitoring.every_s) while it holds the database lease; with
    --port, also the REST API every route of which needs a token (`archipel tokens create --scope read`)."""
    import threading

    ws = open_workspace()
    engine = open_engine(ws)
    if port is None:
        _control_loop(ws, engine, threading.Event(), exit_when_idle)
        return
    import socket

    import uvicorn

    from archipel.api import create_app
    from archipel.errors import SpecError
    from archipel.services.tokens import list_tokens

    loopback = host in ("127.0.0.1", "::1", "localhost")
    if not loopback and not any(t.revoked_at is None for t in list_tokens(engine)):
        raise SpecError(
            f"--host {host}: refusing to serve beyond loopback before any token exists "
            "(create one: archipel tokens create --scope admin)"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    stop = threading.Event()
    loop = threading.Thread(
        target=_control_loop, args=(ws, engine, stop, False), daemon=True, name="reconciler"
    )
    loop.start()
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(create_app(ws, engine), log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        stop.set()
        loop.join(timeout=10)


def _control_loop(ws: Any, engine: Any, stop: Any, exit_when_idle: bool) -> None:
    """Reconcile, autoscale and start due monitoring checks while holding the lease, until ``stop`` is set."""
    import os
    import socket
    import threading

    from archipel.executor.lease import release, try_acquire
    from archipel.services.reconciler import POLL_S, Reconciler

    holder = f"server-{socket.gethostname()}-{os.getpid()}"
    reconciler = Reconciler(ws, engine)
    idle_since = last_scale = time.monotonic()
    seen: dict = {}  # replica -> (when, requests served): the autoscaler's previous reading
    tried: dict[str, float] = {}  # deployment -> when its monitoring last started
    checking: threading.Thread | None = (
        None  # drift checks (and the loops they start) run beside the reconciler
    )
    try:
        while not stop.is_set():
            leader = try_acquire(engine, LEASE, holder)
            active = reconciler.tick() if leader else 1
            if leader and time.monotonic() - last_scale >= AUTOSCALE_S:
                last_scale = time.monotonic()
                _autoscale(ws, engine, seen)
                if checking is None or not checking.is_alive():
                    from archipel.services.monitoring import check_all, due_checks

                    if due := due_checks(engine, tried):
                        checking = threading.Thread(target=check_all, args=(ws, engine, due), daemon=True)
                        checking.start()
            if active:
                idle_since = time.monotonic()
            elif exit_when_idle and time.monotonic() - idle_since > 2.0:
                return
            stop.wait(POLL_S)
    except KeyboardInterrupt:
        return
    finally:
        reconciler.close()
        release(engine, LEASE, holder)


@chaos_app.command("kill-site")
def chaos_kill_site(
    site: Annotated[str, typer.Argument(help="The site to kill.")],
    storage: Annotated[bool, typer.Option("--storage", help="Make its storage unreachable too.")] = False,
) -> None:
    """Kill every job at SITE and mark it unreachable (runs there recover elsewhere)."""
    from archipel.cli import render_runs
    from archipel.services.chaos import kill_site

    ws = open_workspace()
    killed = kill_site(ws, open_engine(ws), site, storage=storage)
    render_runs.console().print(
        f"Killed {len(killed)} jobs at {site}; it is unreachable"
        + (" (storage too)" if storage else "")
        + f" until `archipel chaos revive {site}`."
    )


@chaos_app.command("revive")
def chaos_revive(site: Annotated[str, typer.Argument(help="The site to bring back.")]) -> None:
    """Undo kill-site: storage back, health unknown until the next `sites check`."""
    from archipel.cli import render_runs
    from archipel.services.chaos import revive_site

    ws = open_workspace()
    revive_site(ws, open_engine(ws), site)
    render_runs.console().print(f"{site} revived.")
