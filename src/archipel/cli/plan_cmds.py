"""``archipel plan``: thin over ``services.plan``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archipel.cli.common import JsonOpt, open_engine, open_workspace, print_json


def plan_command(
    spec: Annotated[Path, typer.Argument(help="A job or pipeline YAML file.")],
    objective: Annotated[str, typer.Option(help="cost (cheapest) or time (fastest).")] = "cost",
    solver: Annotated[str, typer.Option(help="auto, milp, greedy or brute.")] = "auto",
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Save the plan (JSON) to run later exactly as planned."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Place each step at the cheapest site the policies allow, and explain every choice and rejection."""
    from archipel.cli import render_plan
    from archipel.errors import SpecError
    from archipel.services.plan import load_plan_spec, make_plan

    if objective not in ("cost", "time"):
        raise SpecError(f"--objective {objective!r}: use cost or time")
    if solver not in ("auto", "milp", "greedy", "brute"):
        raise SpecError(f"--solver {solver!r}: use auto, milp, greedy or brute")
    ws = open_workspace()
    result = make_plan(ws, open_engine(ws), load_plan_spec(spec), objective=objective, solver=solver)
    data = result.as_json()
    data["workdir"] = str(spec.resolve().parent)  # `run --plan` runs the steps from here
    if output is not None:
        import json
        import os

        tmp = output.with_suffix(output.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, output)
    if as_json:
        print_json(data)
    else:
        render_plan.plan(result)
        if output is not None:
            render_plan.console().print(f"Saved to {output} (fingerprint {result.fingerprint[:12]}…).")
