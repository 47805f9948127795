"""``archipel models`` and ``archipel runs compare``: thin over ``services.models`` and ``services.runs``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archipel.cli.common import JsonOpt, open_engine, open_workspace, print_json

models_app = typer.Typer(
    help="Model versions, aliases, promotion gates, replicas, predictions.", no_args_is_help=True
)


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    from archipel.errors import SpecError

    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"{what} {item!r}: write KEY=VALUE")
        out[key] = value
    return out


@models_app.command("ls")
def models_ls(as_json: JsonOpt = False) -> None:
    """Every model: versions, aliases, latest metrics, where its replicas are."""
    from archipel.cli import render_models
    from archipel.services.models import list_models

    ws = open_workspace()
    views = list_models(open_engine(ws))
    if as_json:
        print_json([v.as_json() for v in views])
    else:
        render_models.table(views)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME/N or NAME@ALIAS.")],
    version: Annotated[Optional[int], typer.Option("--version", help="One version, in full.")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """A model's versions and aliases; with a version (NAME/N, NAME@ALIAS or --version): its signature, metrics,
    lineage, replicas and model card."""
    from archipel.cli import render_models
    from archipel.services.models import get_model, get_version, parse_model_ref

    ws = open_workspace()
    engine = open_engine(ws)
    name, number, alias = parse_model_ref(ref)
    if version is None and number is None and alias is None:
        view = get_model(engine, name)
        print_json(view.as_json()) if as_json else render_models.model(view)
        return
    v = get_version(engine, f"{name}/{version}" if version is not None else ref)
    print_json(v.as_json()) if as_json else render_models.version(v)


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    onnx_file: Annotated[Path, typer.Argument(help="An .onnx file.")],
    site: Annotated[str, typer.Option(help="The site whose storage keeps it.")],
    data: Annotated[
        list[str] | None, typer.Option("--data", help="Training dataset (lineage), repeatable.")
    ] = None,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", help="KEY=VALUE, repeatable.")] = None,  # noqa: UP045
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Register an ONNX file as the next version of NAME (checked to run on a batch of its input shape)."""
    import numpy as np

    from archipel.cli import render_models
    from archipel.errors import SpecError
    from archipel.registry.convert import convert, signature_of
    from archipel.services.models import register_version

    try:
        onnx = onnx_file.read_bytes()
        inputs = signature_of(onnx)["inputs"]
    except FileNotFoundError:
        raise SpecError(f"{onnx_file}: no such file") from None
    except Exception as exc:  # not an ONNX model: onnx raises its own decode errors
        raise SpecError(f"{onnx_file} is not an ONNX model: {exc}") from None
    width = inputs[0]["shape"][-1] if inputs and inputs[0]["shape"] else None
    if not width:
        raise SpecError(
            f"{onnx_file}: its first input has no fixed width; register it from Python with a sample"
        )
    metrics = {k: float(v) for k, v in _pairs(metric, "--metric").items()}
    ws = open_workspace()
    converted = convert(onnx, np.zeros((4, width), dtype=np.float32))
    v = register_version(ws, open_engine(ws), name, converted, site=site, datasets=data or [], metrics=metrics,
        description=description)  # fmt: skip
    print_json(v.as_json()) if as_json else render_models.version(v)


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="The version to promote.")],
    to: Annotated[str, typer.Option("--to", help="The alias to move.")] = "production",
    as_json: JsonOpt = False,
) -> None:
    """Move an alias to a version if the model's gates (archipel.yaml `models:`) hold; refused naming the clause."""
    from archipel.cli import render_models
    from archipel.services.models import promote

    ws = open_workspace()
    result = promote(ws, open_engine(ws), name, version, to=to)
    print_json(result.as_json()) if as_json else render_models.promotion(result)


@models_app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. staging.")],
    version: Annotated[Optional[int], typer.Argument(help="Version (omit with --remove).")] = None,  # noqa: UP045
    remove: Annotated[bool, typer.Option("--remove", help="Remove the alias.")] = False,
) -> None:
    """Point an alias at a version without a gate (production should go through `models promote`)."""
    from archipel.cli import render_models
    from archipel.errors import SpecError
    from archipel.services.models import set_alias

    if (version is None) != remove:
        raise SpecError("give a VERSION, or --remove")
    ws = open_workspace()
    previous = set_alias(ws, open_engine(ws), name, alias, version, reason="set by hand")
    render_models.console().print(f"{name}@{alias}: {previous or '-'} -> {version or '-'}")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="The alias to move back.")] = "production",
) -> None:
    """Point the alias back at the version it pointed to before its last move."""
    from archipel.cli import render_models
    from archipel.services.models import rollback

    ws = open_workspace()
    current, target = rollback(ws, open_engine(ws), name, alias)
    render_models.console().print(f"{name}@{alias}: {current} -> {target}")


@models_app.command("replicate")
def models_replicate(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/N.")],
    to: Annotated[str, typer.Option("--to", help="Destination site.")],
    as_json: JsonOpt = False,
) -> None:
    """Copy a version to a site, verified, if its training data's policies allow derived models there."""
    from archipel.cli import render_models
    from archipel.services.models import replicate_model

    ws = open_workspace()
    version, moved = replicate_model(ws, open_engine(ws), ref, to)
    if as_json:
        print_json({"ref": version.ref, "to": to, "bytes_moved": moved, "replicas": version.replicas})
    else:
        render_models.console().print(
            f"{version.ref} at {to}: {moved} bytes moved, verified; replicas: {', '.join(version.replicas)}"
        )


@models_app.command("predict")
def models_predict(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/N.")],
    input_file: Annotated[
        Path, typer.Option("--input", help="JSON: a list of rows (lists, or objects by feature).")
    ],
    site: Annotated[Optional[str], typer.Option(help="Load the replica at this site.")] = None,  # noqa: UP045
) -> None:
    """Run a version with ONNX Runtime here, on rows from a JSON file; prints the outputs as JSON."""
    import json

    from archipel.errors import SpecError
    from archipel.services.models import predict

    try:
        rows = json.loads(input_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpecError(f"{input_file}: not a JSON list of rows ({exc})") from None
    if isinstance(rows, dict) and "instances" in rows:
        rows = rows["instances"]
    if not isinstance(rows, list) or not rows:
        raise SpecError(f"{input_file}: give a non-empty JSON list of rows")
    ws = open_workspace()
    print_json(predict(ws, open_engine(ws), ref, rows, site=site))


@models_app.command("archive")
def models_archive(
    ref: Annotated[str, typer.Argument(help="NAME/N.")], undo: Annotated[bool, typer.Option("--undo")] = False
) -> None:
    """Archive a version (it keeps its number and lineage; aliases cannot point at it)."""
    from archipel.cli import render_models
    from archipel.services.models import update_version

    ws = open_workspace()
    v = update_version(ws, open_engine(ws), ref, status="active" if undo else "archived")
    render_models.console().print(f"{v.ref} is {v.status}")


@models_app.command("delete")
def models_delete(
    ref: Annotated[str, typer.Argument(help="NAME/N (archived).")],
    yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
) -> None:
    """Delete an archived version and its ONNX at every site."""
    from archipel.cli import render_models
    from archipel.errors import SpecError
    from archipel.services.models import delete_version

    if not yes:
        raise SpecError("deleting a version cannot be undone; add --yes")
    ws = open_workspace()
    v = delete_version(ws, open_engine(ws), ref)
    render_models.console().print(f"deleted {v.ref} (sites: {', '.join(v.replicas)})")


@models_app.command("tag")
def models_tag(
    ref: Annotated[str, typer.Argument(help="NAME or NAME/N.")],
    tag: Annotated[Optional[list[str]], typer.Argument(help="KEY=VALUE (KEY= removes).")] = None,  # noqa: UP045
    description: Annotated[Optional[str], typer.Option(help="Set the description.")] = None,  # noqa: UP045
) -> None:
    """Tags and a description on a model or a version."""
    from archipel.cli import render_models
    from archipel.services.models import parse_model_ref, update_model, update_version

    ws = open_workspace()
    engine = open_engine(ws)
    name, number, alias = parse_model_ref(ref)
    tags = _pairs(tag, "tag")
    if number is None and alias is None:
        view = update_model(engine, name, description=description, tags=tags)
        render_models.console().print(f"{name}: tags {view.tags}")
    else:
        v = update_version(ws, engine, ref, description=description, tags=tags)
        render_models.console().print(f"{v.ref}: tags {v.tags}")


@models_app.command("import-mlflow")
def models_import_mlflow(
    path: Annotated[
        Path, typer.Argument(help="An MLflow model directory (MLmodel with sklearn or onnx flavor).")
    ],
    name: Annotated[str, typer.Option(help="The archipel model it becomes a version of.")],
    site: Annotated[str, typer.Option(help="The site whose storage keeps it.")],
    data: Annotated[
        list[str] | None, typer.Option("--data", help="Training dataset (lineage), repeatable.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import an MLflow model as ONNX; a pickle is read by an allow-listing unpickler in a sandboxed subprocess."""
    from archipel.cli import render_models
    from archipel.services.models import import_mlflow

    ws = open_workspace()
    v = import_mlflow(ws, open_engine(ws), path, name, site=site, datasets=data or [])
    print_json(v.as_json()) if as_json else render_models.version(v)


@models_app.command("export-mlflow")
def models_export_mlflow(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/N.")],
    dest: Annotated[Path, typer.Argument(help="The directory to create.")],
    at: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--at", help="The site whose machine holds DEST (the policies decide whether it may go there)."
        ),
    ] = None,
) -> None:
    """Write a version as an MLflow model directory with the onnx flavor, if its data's policies let it leave."""
    from archipel.cli import render_models
    from archipel.services.models import export_mlflow

    ws = open_workspace()
    written = export_mlflow(ws, open_engine(ws), ref, dest, at=at)
    render_models.console().print(f"Wrote {written} (MLflow onnx flavor)")


def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids (or unique prefixes).")],
    as_json: JsonOpt = False,
) -> None:
    """Params and the last value of each metric, side by side."""
    from archipel.cli import render_models
    from archipel.errors import SpecError
    from archipel.services.runs import compare_runs

    if len(run_ids) < 2:
        raise SpecError("give at least two runs to compare")
    ws = open_workspace()
    table = compare_runs(open_engine(ws), run_ids)
    print_json(table) if as_json else render_models.comparison(table)
