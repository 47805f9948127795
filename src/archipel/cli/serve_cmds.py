"""``archipel serve-replica``: one model server (what a deployment starts at a site; usable by hand)."""

from __future__ import annotations

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
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait for a batch to fill.")] = 2.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body.")] = 8.0,
) -> None:
    """Serve one model version with the Open Inference Protocol v2 (REST) until interrupted."""
    from archipel.serving.replica import serve
    from archipel.serving.server import ServerConfig

    ws = open_workspace()
    config = ServerConfig(
        max_body_bytes=int(max_body_mb * 2**20), max_batch=max_batch, max_wait_ms=max_wait_ms
    )
    serve(ws, open_engine(ws), ref, site=site, host=host, port=port, secret_env=secret_env, config=config)
