"""What every command module shares: the workspace option, the engine, JSON output. Imports only typer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from archipel.workspace import Workspace

WorkspaceOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option(
        "--workspace", "-w", help="Workspace directory (default: $ARCHIPEL_WORKSPACE, then upward from here)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class State:
    workspace_path: Path | None = None
    engines: list[Engine] = []  # noqa: RUF012 - opened by this command, disposed when it ends (see main)


def open_workspace(explicit: Path | None = None) -> Workspace:
    from archipel.workspace import load_workspace

    return load_workspace(explicit or State.workspace_path)


def open_engine(workspace: Workspace) -> Engine:
    from archipel.db import connect

    engine = connect(workspace.db_url)
    State.engines.append(engine)
    return engine


def close_engines() -> None:
    """Dispose the engines this command opened (its pooled connections close now, not at garbage collection)."""
    while State.engines:
        State.engines.pop().dispose()


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
