"""``archipel cost``: thin over ``cost.report``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Optional

import typer

from archipel.cli.common import JsonOpt, WorkspaceOpt, open_engine, open_workspace, print_json
from archipel.cli.data_cmds import _parse_since


class GroupOpt(StrEnum):
    """The values of ``--by`` (``cost.report.GroupBy``; an Enum so click lists and checks them)."""

    site = "site"
    provider = "provider"
    tag = "tag"
    run = "run"
    kind = "kind"
    day = "day"


def cost_command(
    by: Annotated[GroupOpt, typer.Option("--by", help="Group the spend by this.")] = GroupOpt.site,
    tag: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--tag", metavar="KEY", help="With --by tag: the tag whose values name the rows."),
    ] = None,
    since: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only entries newer than this: an ISO date/time or a duration like 2h, 7d."),
    ] = None,
    as_json: JsonOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """What was spent (compute, egress, other), grouped and sorted by total; then every budget's status."""
    # typer.BadParameter, not click's: typer vendors click, so only its own exception class becomes exit 2
    if by is GroupOpt.tag and not tag:
        raise typer.BadParameter(
            "--by tag needs --tag KEY, the tag whose values name the rows (e.g. --tag team)",
            param_hint="'--tag'",
        )
    if tag and by is not GroupOpt.tag:
        raise typer.BadParameter(f"applies only with --by tag (got --by {by.value})", param_hint="'--tag'")
    from archipel.cli import render_cost
    from archipel.cost.report import report
    from archipel.db import session_scope

    since_at = _parse_since(since) if since else None
    ws = open_workspace(workspace)
    with session_scope(open_engine(ws)) as session:
        result = report(
            session,
            by=by.value,  # type: ignore[arg-type]  # GroupOpt's values are exactly GroupBy
            since=since_at,
            tag_key=tag,
            budgets=ws.spec.budgets,
        )
    if as_json:
        print_json(result.as_json())
    else:
        render_cost.report(result)
