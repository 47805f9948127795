"""``archipel data``, ``archipel policy`` and ``archipel audit``: thin over ``services.data`` and the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archipel.cli.common import JsonOpt, open_engine, open_workspace, print_json

data_app = typer.Typer(help="Datasets: add, list, show, replicate, erase.", no_args_is_help=True)
policy_app = typer.Typer(help="Policies: explain a decision without acting.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log: list entries, verify the hash chain.", no_args_is_help=True)


@data_app.command("add")
def data_add(
    name: Annotated[str, typer.Argument(help="Dataset name (lowercase letters, digits, '-').")],
    path: Annotated[Path, typer.Argument(help="A .csv or .parquet file.")],
    site: Annotated[Optional[str], typer.Option(help="Home site (required for a new dataset).")] = None,  # noqa: UP045
    classification: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="public, internal, confidential, pii or phi (required for a new dataset)."),
    ] = None,
    jurisdiction: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Origin jurisdiction of the data (default: the home site's)."),
    ] = None,
    description: Annotated[str, typer.Option(help="What the data is.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Ingest a file as the next version of a dataset (stored as Parquet at its home site)."""
    from archipel.cli import render_data
    from archipel.services.data import add_dataset

    ws = open_workspace()
    report = add_dataset(
        ws,
        open_engine(ws),
        name,
        path,
        site=site,
        classification=classification,
        jurisdiction=jurisdiction,
        description=description,
    )
    if as_json:
        print_json({"created": report.created, **report.version.as_json()})
    else:
        render_data.added(report)


@data_app.command("ls")
def data_ls(as_json: JsonOpt = False) -> None:
    """List datasets: classification, jurisdiction, home, latest version, rows, bytes, replicas."""
    from archipel.cli import render_data
    from archipel.services.data import list_datasets

    ws = open_workspace()
    views = list_datasets(open_engine(ws))
    if as_json:
        print_json([v.as_json() for v in views])
    else:
        render_data.datasets_table(views)


@data_app.command("show")
def data_show(
    name: Annotated[str, typer.Argument(help="Dataset name or NAME@vN.")], as_json: JsonOpt = False
) -> None:
    """One dataset: schema, rows, bytes, sha256, home site and replicas of each version."""
    from archipel.cli import render_data
    from archipel.data.ingest import parse_ref
    from archipel.services.data import get_dataset

    ws = open_workspace()
    view = get_dataset(open_engine(ws), parse_ref(name).name)
    if as_json:
        print_json(view.as_json())
    else:
        render_data.dataset_detail(view)


@data_app.command("versions")
def data_versions(
    name: Annotated[str, typer.Argument(help="Dataset name.")], as_json: JsonOpt = False
) -> None:
    """Every version of a dataset with its identity and where it is stored."""
    from archipel.cli import render_data
    from archipel.services.data import get_dataset

    ws = open_workspace()
    view = get_dataset(open_engine(ws), name)
    if as_json:
        print_json([v.as_json() for v in view.versions])
    else:
        render_data.versions_table(view)


@data_app.command("replicate")
def data_replicate(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@vN.")],
    to: Annotated[str, typer.Option("--to", help="Destination site.")],
    streams: Annotated[int, typer.Option(help="Parallel streams.", min=1, max=64)] = 4,
    as_json: JsonOpt = False,
) -> None:
    """Copy a dataset version to another site: policy-checked first, verified end to end, egress recorded."""
    from archipel.cli import render_data
    from archipel.services.data import replicate_dataset

    ws = open_workspace()
    with render_data.transfer_progress(enabled=not as_json) as progress:
        report = replicate_dataset(ws, open_engine(ws), ref, to, streams=streams, progress=progress)
    if as_json:
        print_json(report.as_json())
    else:
        render_data.replicated(report)


@data_app.command("erase")
def data_erase(
    ref: Annotated[str, typer.Argument(help="NAME (every version) or NAME@vN.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Erase without asking.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a dataset's bytes from every site (GDPR Art. 17); the audit log keeps the fact."""
    import sys

    from archipel.cli import render_data
    from archipel.errors import UserError
    from archipel.services.data import erase_dataset

    if not yes:
        if not sys.stdin.isatty():
            raise UserError(
                "refusing to erase without confirmation on a non-interactive terminal; pass --yes"
            )
        typer.confirm(f"Erase {ref} from every site?", abort=True)
    ws = open_workspace()
    report = erase_dataset(ws, open_engine(ws), ref)
    if as_json:
        print_json(report.as_json())
    else:
        render_data.erased(report)


@policy_app.command("check")
def policy_check(
    data: Annotated[str, typer.Option("--data", help="Dataset NAME or NAME@vN.")],
    site: Annotated[str, typer.Option("--site", help="The site in question.")],
    action: Annotated[
        str, typer.Option(help="store, process, replicate, derive_export, serve or aggregate_export.")
    ] = "process",
    origin: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Requester's jurisdiction (for serve)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Explain what the policies say about an action on a dataset at a site, without acting."""
    from archipel.cli import render_data
    from archipel.models.policy import ACTIONS
    from archipel.services.data import check_policy

    if action not in ACTIONS:
        from archipel.errors import SpecError

        raise SpecError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    ws = open_workspace()
    decision = check_policy(ws, open_engine(ws), data, site, action, origin)
    if as_json:
        print_json(decision.as_json())
    else:
        render_data.decision(decision)
    if not decision.allowed:
        raise typer.Exit(code=5)


@policy_app.command("defaults")
def policy_defaults() -> None:
    """Print the built-in rules that follow the workspace's own (as YAML you can copy into archipel.yaml)."""
    import yaml

    from archipel.policy.engine import DEFAULT_RULES

    rules = [r.model_dump(mode="json", exclude_defaults=True) for r in DEFAULT_RULES]
    typer.echo(yaml.safe_dump({"policies": rules}, sort_keys=False).rstrip())


@audit_app.command("ls")
def audit_ls(
    since: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only entries newer than this: an ISO date/time or a duration like 2h, 7d."),
    ] = None,
    action: Annotated[Optional[str], typer.Option(help="Action prefix, e.g. policy. or data.")] = None,  # noqa: UP045
    limit: Annotated[int, typer.Option(help="The newest N entries.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List audit entries, oldest first: who, what, where, allowed or refused, why."""
    from archipel.cli import render_data
    from archipel.policy.audit import AuditLog

    ws = open_workspace()
    entries = AuditLog(open_engine(ws), ws.state_dir).entries(
        since=_parse_since(since) if since else None, action=action, limit=limit
    )
    if as_json:
        print_json([e.as_json() for e in entries])
    else:
        render_data.audit_table(entries)


@audit_app.command("verify")
def audit_verify(as_json: JsonOpt = False) -> None:
    """Check the hash chain and its anchor; name the first entry that was edited, deleted or reordered."""
    from archipel.cli import render_data
    from archipel.policy.audit import AuditLog

    ws = open_workspace()
    report = AuditLog(open_engine(ws), ws.state_dir).verify()
    if as_json:
        print_json(report.as_json())
    else:
        render_data.verify_report(report)
    if not report.ok:
        raise typer.Exit(code=1)


def _parse_since(text: str):
    from datetime import UTC, datetime, timedelta

    from archipel.errors import SpecError
    from archipel.models.units import parse_duration

    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SpecError(
            f"--since {text!r}: use an ISO date/time (2026-11-01) or a duration (2h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
