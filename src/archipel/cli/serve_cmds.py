"""``archipel serve-replica``: one model server (what a deployment starts at a site; usable by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archipel.cli.common import open_engine, open_workspace


def serve_replica_command(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/N.")],
    site: Annotated[str, typer.Option(help="The site whose storage holds the version.")],
    host: Annotated[str, typer.Option(help="Bind address (loopback unless --secret-env).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one; printed as LISTENING PORT).")] = 0,
    secret_env: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Variable holding the secret gateways send (X-Archipel-Replica-Secret)."),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most rows per model call.")] = 64,
    max_wait_ms: Annotated[
        float, typer.Option(help="Longest wait for a batch to fill (0: batch what is queued).")
    ] = 0.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body.")] = 8.0,
    sample_rate: Annotated[
        float, typer.Option(help="Share of requests kept, with predictions, in the site's storage.")
    ] = 0.0,
) -> None:
    """Serve one model version with the Open Inference Protocol v2 (REST) until interrupted."""
    from archipel.serving.replica import serve
    from archipel.serving.server import ServerConfig

    ws = open_workspace()
    config = ServerConfig(
        max_body_bytes=int(max_body_mb * 2**20), max_batch=max_batch, max_wait_ms=max_wait_ms
    )
    serve(ws, open_engine(ws), ref, site=site, host=host, port=port, secret_env=secret_env, config=config,
          sample_rate=sample_rate)  # fmt: skip


tokens_app = typer.Typer(help="Bearer tokens: read < infer < deploy < admin.", no_args_is_help=True)


@tokens_app.command("create")
def tokens_create(
    scope: Annotated[str, typer.Option(help="read, infer, deploy or admin.")],
    name: Annotated[str, typer.Option(help="What it is for.")] = "",
    deployment: Annotated[Optional[str], typer.Option(help="Limit it to one deployment.")] = None,  # noqa: UP045
    origin: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--origin", help="A jurisdiction the bearer may assert (X-Archipel-Origin), repeatable."
        ),
    ] = None,
    ttl_days: Annotated[Optional[float], typer.Option(help="Expire after this many days.")] = None,  # noqa: UP045
) -> None:
    """Create a token; it is printed once (only its hash is stored)."""
    from datetime import timedelta

    from archipel.cli import render
    from archipel.services.tokens import create_token

    ws = open_workspace()
    whole, token = create_token(ws, open_engine(ws), scope=scope, name=name, deployment=deployment,
        origins=origin or [], ttl=timedelta(days=ttl_days) if ttl_days else None)  # fmt: skip
    render.console().print(f"Token {token.id} ({token.scope}); shown once, store it now:", highlight=False)
    typer.echo(whole)


@tokens_app.command("ls")
def tokens_ls(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Tokens (never their secrets)."""
    from rich.table import Table

    from archipel.cli import render
    from archipel.cli.common import print_json
    from archipel.services.tokens import list_tokens

    ws = open_workspace()
    tokens = list_tokens(open_engine(ws))
    if as_json:
        print_json([t.as_json() for t in tokens])
        return
    table = Table("id", "name", "scope", "deployment", "origins", "created", "state")
    for t in tokens:
        state = "revoked" if t.revoked_at else "active"
        table.add_row(t.id, t.name, t.scope, t.deployment or "-", ", ".join(t.origins) or "-",
                      t.created_at.strftime("%Y-%m-%d %H:%M"), state)  # fmt: skip
    render.console().print(table)


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[str, typer.Argument(help="The token's id.")]) -> None:
    """Revoke a token at once (every gateway checks the store)."""
    from archipel.cli import render
    from archipel.services.tokens import revoke_token

    ws = open_workspace()
    revoke_token(ws, open_engine(ws), token_id)
    render.console().print(f"revoked {token_id}")


deployments_app = typer.Typer(help="Deployments: status, rollback, down.", no_args_is_help=True)


def deploy_command(
    spec: Annotated[Path, typer.Argument(help="A deployment YAML file.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start (or update) a deployment: the model copied where allowed, replicas started, waits until ready."""
    from archipel.cli.common import print_json
    from archipel.models.deployment import DeploymentSpec
    from archipel.services.deployments import deploy
    from archipel.spec.validate import load_model_file

    parsed = load_model_file(spec, DeploymentSpec)
    ws = open_workspace()
    view = deploy(ws, open_engine(ws), parsed)
    print_json(view.as_json()) if as_json else _show(view)


def _show(view) -> None:
    from rich.table import Table

    from archipel.cli import render

    render.console().print(f"Deployment [bold]{view.name}[/]: {view.model}/{view.version} {view.state}")
    table = Table("replica", "site", "jurisdiction", "version", "url", "$/h")
    for r in view.replicas:
        price = f"{r['hourly_usd']:.4f}" if r.get("hourly_usd") is not None else "-"
        table.add_row(str(r["id"]), r["site"], r["jurisdiction"], str(r["version"]), r["url"], price)
    render.console().print(table)


@deployments_app.command("ls")
def deployments_ls(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every deployment with its replicas."""
    from archipel.cli.common import print_json
    from archipel.services.deployments import list_deployments

    ws = open_workspace()
    views = list_deployments(open_engine(ws))
    if as_json:
        print_json([v.as_json() for v in views])
    else:
        for view in views:
            _show(view)


@deployments_app.command("status")
def deployments_status(
    name: Annotated[str, typer.Argument()], as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """One deployment's version and replicas."""
    from archipel.cli.common import print_json
    from archipel.services.deployments import get_deployment

    ws = open_workspace()
    view = get_deployment(open_engine(ws), name)
    print_json(view.as_json()) if as_json else _show(view)


@deployments_app.command("rollback")
def deployments_rollback(name: Annotated[str, typer.Argument()]) -> None:
    """Serve the previous version again (new replicas first, then the current ones stop)."""
    from archipel.services.deployments import rollback_deployment

    ws = open_workspace()
    _show(rollback_deployment(ws, open_engine(ws), name))


@deployments_app.command("down")
def deployments_down(name: Annotated[str, typer.Argument()]) -> None:
    """Stop every replica of a deployment (their hours go to the ledger)."""
    from archipel.services.deployments import down

    ws = open_workspace()
    _show(down(ws, open_engine(ws), name))


def gateway_command(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one; printed as LISTENING PORT).")] = 8080,
    health_interval_s: Annotated[
        float, typer.Option(help="Seconds between health checks of each replica.")
    ] = 1.0,
    base_ejection_s: Annotated[
        float, typer.Option(help="Ejection time after 5 consecutive failures (x times).")
    ] = 30.0,
) -> None:
    """The front door: OIP v2 routes, bearer tokens, residency-aware routing, retries and failover."""

    from archipel.serving.gateway import Gateway, GatewayConfig, run_gateway, secret_from_env
    from archipel.serving.http1 import listen

    ws = open_workspace()
    config = GatewayConfig(
        health_interval_s=health_interval_s, base_ejection_s=base_ejection_s, replica_secret=secret_from_env()
    )
    app = Gateway(ws, open_engine(ws), config)
    sock = listen(host, port)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    run_gateway(app, sock)
