"""Rendering runs: the list, one run's steps and attempts, state changes and log lines while following."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from archipel.cli.render import console

if TYPE_CHECKING:
    from rich.console import Console

    from archipel.services.runs import RunView

__all__ = ["console", "log_lines", "show", "step_change", "table"]

_COLOURS = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
    "RECOVERING": "magenta",
}


def _state(state: str) -> str:
    colour = _COLOURS.get(state)
    return f"[{colour}]{state}[/]" if colour else state


def table(views: list[RunView]) -> None:
    out = console()
    if not views:
        out.print("No runs yet: archipel run FILE")
        return
    t = Table("run", "state", "steps", "sites", "attempts", "cost", "planned", "created")
    for v in views:
        sites = sorted({s["site"] for s in v.steps if s["site"]})
        done = sum(s["state"] == "SUCCEEDED" for s in v.steps)
        t.add_row(
            escape(v.id), _state(v.state), f"{done}/{len(v.steps)}", ", ".join(sites), str(len(v.attempts)),
            f"${v.cost_usd:.6f}", f"${v.planned_usd:.4f}", v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )  # fmt: skip
    out.print(t)


def show(v: RunView) -> None:
    out = console()
    out.print(
        f"Run [bold]{escape(v.id)}[/] {_state(v.state)}: cost ${v.cost_usd:.6f} (planned ${v.planned_usd:.4f})"
    )
    steps = Table(
        "step", "state", "site", "offer", "retries", "recoveries", "checkpoint", "outputs", "message"
    )
    for s in v.steps:
        ckpt = s["checkpoint"]
        steps.add_row(
            s["step"], _state(s["state"]) + (" (cached)" if s["cached_from"] else ""), s["site"] or "-",
            (s["offer"] or "-") + (" spot" if s["spot"] else ""), str(s["failures"]), str(s["recoveries"]),
            f"#{ckpt['seq']} at {', '.join(ckpt['sites'])}" if ckpt else "-",
            ", ".join(f"{n} {o['sha256'][:10]}" for n, o in s["outputs"].items()) or "-", escape(s["message"]),
        )  # fmt: skip
    out.print(steps)
    if v.attempts:
        attempts = Table("step", "#", "site", "job", "state", "exit", "reason", "cost")
        for a in v.attempts:
            attempts.add_row(
                a["step"], str(a["number"]), a["site"], a["job_id"] or "-", _state(a["state"]),
                "-" if a["exit_code"] is None else str(a["exit_code"]), escape(a["exit_reason"]),
                f"${a['cost_usd']:.6f}",
            )  # fmt: skip
        out.print(attempts)
    last: dict[str, Any] = {}
    for m in v.metrics:
        if m["kind"] == "metric":
            last[m["key"]] = m
    if last:
        out.print(
            "Metrics: " + ", ".join(f"{k}={m['value']:.4g} (step {m['at_step']})" for k, m in last.items())
        )


def step_change(step: dict[str, Any], out: Console | None = None) -> None:
    (out or console()).print(
        f"[bold]{escape(step['step'])}[/] {_state(step['state'])} {escape(step['message'])}"
    )


def log_lines(step: str, attempt: int, text: str) -> None:
    out = console()
    for line in text.splitlines():
        out.print(f"[dim]{escape(step)}#{attempt}[/] {escape(line)}", highlight=False)
