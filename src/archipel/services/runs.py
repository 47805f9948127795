"""``archipel run`` and ``archipel runs``: submit a planned run, follow it, list, show, cancel, read logs.

Submitting writes the desired state (a PENDING run with its plan, a code snapshot) in one transaction; the
reconciler (:mod:`archipel.services.reconciler`, run by ``archipel server`` or embedded in ``archipel run``)
does the rest.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from archipel.db.engine import session_scope
from archipel.db.orm import RunAttemptRow, RunMetricRow, RunRow, RunStepRow
from archipel.db.types import utcnow
from archipel.errors import Conflict, NotFound
from archipel.executor.launch import cache_key, code_hash, code_snapshot
from archipel.executor.states import TERMINAL, RunState
from archipel.policy.audit import AuditLog
from archipel.services.plan import PlanResult
from archipel.workspace import Workspace

__all__ = [
    "RunView",
    "cancel_run",
    "compare_runs",
    "follow_logs",
    "get_run",
    "list_runs",
    "predict_cached",
    "run_logs",
    "submit_run",
]


def _run_id(name: str) -> str:
    return f"{name[:40]}-{secrets.token_hex(4)}"


def submit_run(
    workspace: Workspace, engine: Engine, result: PlanResult, *, workdir: Path, reuse: bool = True
) -> str:
    """Record a PENDING run of ``result``'s plan; its steps run from a snapshot of ``workdir``. With ``reuse``
    a step whose cache key (spec, code, input hashes) matches an earlier successful step takes its outputs."""
    run_id = _run_id(result.spec.name)
    folder = workspace.state_dir / "runs" / run_id
    code = code_snapshot(workdir, folder / "code")
    (folder / "code.sha256").write_text(code + "\n")
    tags = dict(result.spec.tags)
    with session_scope(engine) as session:
        session.add(
            RunRow(
                id=run_id,
                name=result.spec.name,
                state=RunState.PENDING,
                spec=result.spec.model_dump(mode="json"),
                plan={**result.as_json(), "reuse": reuse},
                tags=tags,
                workdir=str(workdir),
            )
        )
        session.flush()
        for step in result.spec.order():
            session.add(RunStepRow(run_id=run_id, step=step, state=RunState.PENDING, outputs={}))
    AuditLog(engine, workspace.state_dir).record(
        action="run.submit",
        subject=run_id,
        outcome="done",
        reason=f"planned cost ${result.plan.total_usd:.4f}",
        sites=sorted({p.chosen.site for p in result.plan.placements}),
        details={"fingerprint": result.fingerprint},
    )
    return run_id


@dataclass(frozen=True)
class RunView:
    id: str
    name: str
    state: str
    created_at: datetime
    ended_at: datetime | None
    tags: dict[str, Any]
    steps: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    planned_usd: float
    cost_usd: float

    def as_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "created_at": self.created_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
        }


def _jsonable(row: Any) -> dict[str, Any]:
    out = {}
    for column in row.__table__.columns:
        value = getattr(row, column.key)
        out[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _view(session: Any, run: RunRow, *, details: bool) -> RunView:
    steps = session.scalars(select(RunStepRow).where(RunStepRow.run_id == run.id).order_by(RunStepRow.id))
    attempts = list(
        session.scalars(
            select(RunAttemptRow).where(RunAttemptRow.run_id == run.id).order_by(RunAttemptRow.id)
        )
    )
    metrics = (
        session.scalars(select(RunMetricRow).where(RunMetricRow.run_id == run.id).order_by(RunMetricRow.id))
        if details
        else []
    )
    return RunView(
        run.id,
        run.name,
        run.state,
        run.created_at,
        run.ended_at,
        dict(run.tags),
        [_jsonable(s) for s in steps],
        [_jsonable(a) for a in attempts],
        [{k: v for k, v in _jsonable(m).items() if k not in ("id", "run_id")} for m in metrics],
        float(run.plan.get("total_usd", 0.0)),
        sum(a.cost_usd for a in attempts),
    )


def list_runs(engine: Engine, *, limit: int = 50) -> list[RunView]:
    with session_scope(engine) as session:
        runs = session.scalars(select(RunRow).order_by(RunRow.created_at.desc()).limit(limit))
        return [_view(session, run, details=False) for run in runs]


def _find(session: Any, run_id: str) -> RunRow:
    run = session.get(RunRow, run_id)
    if run is None:
        matches = list(session.scalars(select(RunRow).where(RunRow.id.startswith(run_id)).limit(2)))
        if len(matches) != 1:
            raise NotFound(f"no run {run_id!r}" + (" (ambiguous prefix)" if matches else ""))
        run = matches[0]
    return run


def get_run(engine: Engine, run_id: str, *, metrics: bool = True) -> RunView:
    """One run (a unique id prefix is enough); ``metrics=False`` skips its metrics, for pollers."""
    with session_scope(engine) as session:
        return _view(session, _find(session, run_id), details=metrics)


def cancel_run(workspace: Workspace, engine: Engine, run_id: str) -> str:
    """Ask for the run to stop; the reconciler cancels its running jobs. Returns the run id."""
    with session_scope(engine) as session:
        run = _find(session, run_id)
        if RunState(run.state).terminal:
            raise Conflict(f"run {run.id} already ended ({run.state})")
        run.cancel_requested, run.updated_at = True, utcnow()
        found = run.id
    AuditLog(engine, workspace.state_dir).record(
        action="run.cancel", subject=found, outcome="done", reason="cancel requested"
    )
    return found


def run_logs(
    workspace: Workspace, engine: Engine, run_id: str, *, step: str | None = None, offsets: dict | None = None
) -> list[tuple[str, int, str]]:
    """New output of every attempt (``(step, attempt, text)``), from ``offsets`` (updated in place)."""
    offsets = {} if offsets is None else offsets
    view = get_run(engine, run_id, metrics=False)
    out = []
    for attempt in view.attempts:
        if (step is not None and attempt["step"] != step) or not attempt["job_id"]:
            continue
        key = (attempt["step"], attempt["number"])
        try:
            text, offsets[key] = workspace.compute(attempt["site"]).logs(
                attempt["job_id"], offsets.get(key, 0)
            )
        except NotFound:
            continue
        if text:
            out.append((attempt["step"], attempt["number"], text))
    return out


def follow_logs(
    workspace: Workspace, engine: Engine, run_id: str, *, step: str | None = None, poll_s: float = 0.5
) -> Iterator[tuple[str, int, str]]:
    """Every attempt's output as it comes (``(step, attempt, text)``), until the run has ended and its last output
    is read. ``NotFound`` before anything is yielded if there is no such run."""
    offsets: dict = {}
    chunks = run_logs(workspace, engine, run_id, step=step, offsets=offsets)
    while True:
        yield from chunks
        if (
            get_run(engine, run_id, metrics=False).state in TERMINAL
        ):  # what the last attempt wrote before it ended
            yield from run_logs(workspace, engine, run_id, step=step, offsets=offsets)
            return
        time.sleep(poll_s)
        chunks = run_logs(workspace, engine, run_id, step=step, offsets=offsets)


def predict_cached(engine: Engine, result: PlanResult, *, workdir: Path) -> dict[str, str]:
    """Steps a run of ``result`` from ``workdir`` would reuse, each with the run whose outputs it would take:
    those whose spec, code and inputs match an earlier successful step (in pipeline order, so a step reading a
    cached step's outputs can be cached too)."""
    code, plan = code_hash(workdir), result.as_json()
    upstream: dict[tuple[str, str], str | None] = {}
    cached: dict[str, str] = {}
    with session_scope(engine) as session:
        for name in result.spec.order():
            step = result.spec.steps[name]
            if any(n not in cached for n in step.needs):
                continue
            key = cache_key(step, plan, upstream, code)
            row = session.scalars(
                select(RunStepRow)
                .where(RunStepRow.cache_key == key, RunStepRow.state == RunState.SUCCEEDED)
                .order_by(RunStepRow.id.desc())
            ).first()
            if row is None:
                continue
            cached[name] = row.cached_from or row.run_id
            upstream.update({(name, out): o.get("sha256") for out, o in row.outputs.items()})
    return cached


def compare_runs(engine: Engine, run_ids: list[str]) -> dict[str, Any]:
    """Params and the last value of every metric of each run: ``{runs, params: {key: [..]}, metrics: {key: [..]}}``."""
    views = [get_run(engine, run_id) for run_id in run_ids]
    params: dict[str, list[str | None]] = {}
    metrics: dict[str, list[float | None]] = {}
    for i, view in enumerate(views):
        for m in view.metrics:
            key = m["key"] if len(view.steps) == 1 else f"{m['step']}.{m['key']}"
            if m["kind"] == "param":
                params.setdefault(key, [None] * len(views))[i] = m["text"]
            elif m["kind"] == "metric":
                metrics.setdefault(key, [None] * len(views))[i] = m["value"]  # the last logged wins
    return {
        "runs": [v.id for v in views],
        "params": dict(sorted(params.items())),
        "metrics": dict(sorted(metrics.items())),
    }
