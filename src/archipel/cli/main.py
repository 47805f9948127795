"""The ``archipel`` command. Thin: parse, call one service, render.

Only typer is imported at module level: ``archipel --help`` must not pay for pydantic, SQLAlchemy or any
SDK (a test checks ``sys.modules``). Each command imports the services it calls when it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    pass

from archipel.cli.common import (
    JsonOpt,
    State,
    WorkspaceOpt,
    close_engines,
    open_engine,
    open_workspace,
    print_json,
)
from archipel.cli.cost_cmds import cost_command
from archipel.cli.data_cmds import audit_app, data_app, policy_app
from archipel.cli.model_cmds import models_app, runs_compare
from archipel.cli.monitor_cmds import monitor_app, triggers_app
from archipel.cli.plan_cmds import plan_command
from archipel.cli.run_cmds import chaos_app, run_command, runs_app, server_command
from archipel.cli.serve_cmds import (
    deploy_command,
    deployments_app,
    gateway_command,
    serve_replica_command,
    tokens_app,
)

app = typer.Typer(
    name="archipel",
    help="archipel: plan, run, register, replicate, serve and monitor ML across clouds, on-prem and edge sites.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
sites_app = typer.Typer(help="Sites: list them, check their storage and compute.", no_args_is_help=True)
app.add_typer(sites_app, name="sites")
app.add_typer(data_app, name="data")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.command("plan")(plan_command)
app.command("cost")(cost_command)
app.command("run")(run_command)
app.add_typer(runs_app, name="runs")
app.command("server")(server_command)
app.add_typer(chaos_app, name="chaos")
app.add_typer(models_app, name="models")
runs_app.command("compare")(runs_compare)
app.command("serve-replica")(serve_replica_command)
app.add_typer(tokens_app, name="tokens")
app.command("deploy")(deploy_command)
app.add_typer(deployments_app, name="deployments")
app.command("gateway")(gateway_command)
app.add_typer(monitor_app, name="monitor")
app.add_typer(triggers_app, name="triggers")


def _print_version(value: bool) -> None:
    if value:
        from archipel import __version__

        typer.echo(f"archipel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    workspace: WorkspaceOpt = None,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    State.workspace_path = workspace


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Directory for the workspace.")] = Path("."),
    demo: Annotated[
        bool, typer.Option("--demo", help="Three local sites standing in for two clouds and on-prem.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing archipel.yaml.")] = False,
) -> None:
    """Create a workspace (archipel.yaml, state folder, site folders) and apply it."""
    from archipel.cli import render
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.init import init_workspace

    workspace = init_workspace(path, demo=demo, force=force)
    engine = open_engine(workspace)
    apply_plan(workspace, engine, plan_apply(workspace, engine))
    render.console().print(
        f"Created {workspace.file} with {len(workspace.spec.sites)} site(s); next: "
        f"[bold]archipel -w {workspace.root} sites check[/bold]"
    )


@app.command()
def apply(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff only.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Validate archipel.yaml and sync it into the metadata store, showing the diff first."""
    from archipel.cli import render
    from archipel.services.apply import apply_plan, plan_apply

    workspace = open_workspace()
    engine = open_engine(workspace)
    plan = plan_apply(workspace, engine)
    if as_json:
        print_json(render.apply_plan_json(plan))
    else:
        render.apply_plan(plan)
    if plan.empty or dry_run:
        return
    if not yes:
        if not sys.stdin.isatty():
            from archipel.errors import UserError

            raise UserError(
                "refusing to apply without confirmation on a non-interactive terminal; pass --yes"
            )
        typer.confirm("Apply these changes?", abort=True)
    apply_plan(workspace, engine, plan)
    if not as_json:
        counts = plan.counts()
        render.console().print(
            f"Applied: {counts['add']} added, {counts['change']} changed, {counts['remove']} removed."
        )


@sites_app.command("ls")
def sites_ls(as_json: JsonOpt = False) -> None:
    """List sites: provider, region, jurisdiction, storage, compute, capacity, health."""
    from archipel.cli import render
    from archipel.services.sites import list_sites

    workspace = open_workspace()
    views, pending = list_sites(workspace, open_engine(workspace))
    if as_json:
        print_json([v.as_json() for v in views])
        return
    render.sites_table(views)
    if pending:
        render.console().print(
            "[yellow]archipel.yaml has changes that are not applied: run `archipel apply`.[/]"
        )


@sites_app.command("check")
def sites_check(
    sites: Annotated[Optional[list[str]], typer.Argument(help="Sites to check (default: all).")] = None,  # noqa: UP045
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each site's probe process.")] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Write/read/delete a probe object in each site's storage and run a trivial process on its compute."""
    from archipel.cli import render
    from archipel.services.sites import check_sites

    workspace = open_workspace()
    results = check_sites(workspace, open_engine(workspace), sites or None, timeout_s=timeout)
    if as_json:
        print_json([r.as_json() for r in results])
    else:
        render.checks_table(results)
    if not all(r.health == "healthy" for r in results):
        raise typer.Exit(code=9)


@app.command()
def offers(
    cpus: Annotated[float, typer.Option(help="vCPUs needed.")] = 1,
    memory: Annotated[str, typer.Option(help="Memory needed: GiB or a size like 16GiB.")] = "0",
    accelerator: Annotated[Optional[str], typer.Option(help="Accelerator NAME[:COUNT], e.g. A100:1.")] = None,  # noqa: UP045
    spot: Annotated[bool, typer.Option("--spot", help="Spot/preemptible prices.")] = False,
    site: Annotated[Optional[list[str]], typer.Option(help="Only these sites (repeatable).")] = None,  # noqa: UP045
    provider: Annotated[Optional[list[str]], typer.Option(help="Only these providers (repeatable).")] = None,  # noqa: UP045
    limit: Annotated[int, typer.Option(help="Show at most this many rows.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Cheapest offers across the workspace's sites that fit a request."""
    from archipel.cli import render
    from archipel.services.offers import find_offers

    request = _offer_request(cpus, memory, accelerator, spot, site, provider)
    workspace = open_workspace()
    rows = find_offers(workspace, request)
    if as_json:
        print_json([r.as_json() for r in rows[:limit]])
        return
    render.offers_table(rows[:limit], request, total=len(rows))


def _offer_request(
    cpus: float,
    memory: str,
    accelerator: str | None,
    spot: bool,
    sites: list[str] | None,
    providers: list[str] | None,
) -> Any:
    from archipel.errors import SpecError
    from archipel.models.units import parse_size
    from archipel.services.offers import OfferRequest

    try:
        memory_gib = parse_size(memory, default_unit="gib") / 2**30
    except ValueError as exc:
        raise SpecError(f"--memory: {exc}") from None
    acc_name, acc_count = None, 0
    if accelerator:
        acc_name, _, count = accelerator.partition(":")
        try:
            acc_count = int(count) if count else 1
        except ValueError:
            raise SpecError(f"--accelerator {accelerator!r}: write NAME or NAME:COUNT, e.g. A100:1") from None
        if acc_count < 1 or not acc_name:
            raise SpecError(f"--accelerator {accelerator!r}: write NAME or NAME:COUNT with COUNT >= 1")
    if cpus < 0:
        raise SpecError("--cpus cannot be negative")
    return OfferRequest(
        cpus=cpus,
        memory_gib=memory_gib,
        accelerator=acc_name,
        accelerator_count=acc_count,
        spot=spot,
        sites=tuple(sites or ()),
        providers=tuple(providers or ()),
    )


@app.command()
def schema(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file.")] = None,  # noqa: UP045
) -> None:
    """JSON schema of archipel.yaml, generated from the models (for editors and CI)."""
    import json

    from archipel.spec.schema import workspace_schema

    text = json.dumps(workspace_schema(), indent=2) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@app.command()
def demo(
    workspace: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--workspace", "-w", help="Where to build the demo workspace (default: a new temporary folder)."
        ),
    ] = None,
    summary: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write the JSON summary of every figure here (default: in the workspace)."),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option("--fast", help="Shorter training and traffic (the same steps and checks), for tests."),
    ] = False,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            help="Leave the model served behind a gateway, and the API and dashboard up, when the story ends "
            "(prints where, and how to stop them).",
        ),
    ] = False,
) -> None:
    """Tell archipel's story on local sites standing in for clouds; prints only figures it computed.

    Sites and prices, data under residency rules, a plan, training that survives a killed worker, the model
    registered and gated, served behind a gateway while a site dies, drift found and the model retrained, then the
    cost ledger and the audit log verified. Exit code 0 only if every step's check held.
    """
    from archipel.cli.demo import run_demo

    ok = run_demo(
        workspace or State.workspace_path, summary_path=summary, fast=fast, keep_running=keep_running
    )
    if not ok:
        raise typer.Exit(code=1)


@app.command()
def version() -> None:
    """Print the version."""
    from archipel import __version__

    typer.echo(f"archipel {__version__}")


def _remote_invocation(argv: list[str]) -> Any:
    """What to run against ARCHIPEL_URL, or None; a command line click cannot parse runs here, to say why."""
    from archipel.cli.remote import invocation

    try:
        return invocation(argv)
    except Exception:  # a usage error: the local parser says it properly
        return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app and maps archipel's errors to one-paragraph messages and exit codes."""
    from archipel.errors import ArchipelError, exit_code_for

    try:
        from archipel.cli.remote import remote_url

        found = remote_url() and _remote_invocation(sys.argv[1:] if argv is None else argv)
        if found:
            from archipel.cli.remote import run_remote

            run_remote(*found)
        else:
            app(args=argv, prog_name="archipel")
    except ArchipelError as err:
        from archipel.cli import render

        render.error(err)
        sys.exit(exit_code_for(err))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    finally:
        close_engines()
