"""The control loop that moves runs through their life cycle (see :mod:`archipel.executor.states`).

One :meth:`Reconciler.tick` looks at every active run and, per step:

- ``PENDING`` with every need ``SUCCEEDED`` (and its retry backoff over): reuse the outputs of an earlier run
  with the same cache key, or place it: the plan's chosen site, else the next ranked candidate when the chosen
  one is unhealthy or answers ``NoCapacity``; materialise its inputs there (datasets replicated and upstream
  outputs copied, policy-checked) and launch it through the site's compute backend.
- ``RUNNING``: read the worker's events (metrics, checkpoints, outputs), copy a new checkpoint to a fallback
  site in the background, and look at the compute job: exit 0 → ``SUCCEEDED`` (compute cost to the ledger);
  a non-zero exit is the code's fault → retried up to ``retries`` with backoff; a signal, a lost supervisor,
  a cancelled job or a heartbeat older than :data:`HEARTBEAT_TIMEOUT_S` means the worker or its site died →
  ``RECOVERING``.
- ``RECOVERING``: the same site if it is healthy, else the best other candidate the policies allow, resumed
  from the last checkpoint (copied there first). With no allowed healthy site left the step waits and its
  message says why (each site's reason).

Detection bounds (documented): a worker killed by a signal is seen at the next tick (``POLL_S``); a worker that
hangs or whose machine vanished without its supervisor noticing is declared lost once its heartbeat is
:data:`HEARTBEAT_TIMEOUT_S` old. Database work happens in short transactions; storage, compute and transfers
run between them, never inside one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from archipel.backends.compute.base import JobState, LaunchRequest, Resources
from archipel.cost.ledger import add_entry, budget_status
from archipel.data.ingest import DatasetRef
from archipel.db.engine import session_scope
from archipel.db.orm import RunAttemptRow, RunMetricRow, RunRow, RunStepRow, SiteRow
from archipel.db.types import utcnow
from archipel.errors import ArchipelError, NoCapacity, NotFound, PolicyViolation
from archipel.executor.channel import heartbeat_age, read_events, write_context
from archipel.executor.launch import cache_key, pinned_model, pinned_version, with_setup
from archipel.executor.moves import allowed, move_object
from archipel.executor.states import TERMINAL, RunState
from archipel.models.job import PipelineSpec, StepSpec
from archipel.policy.audit import AuditLog
from archipel.policy.engine import Subject
from archipel.services.data import get_dataset, replicate_dataset, resolve_version
from archipel.workspace import Workspace

__all__ = ["HEARTBEAT_TIMEOUT_S", "MAX_RECOVERIES", "POLL_S", "Reconciler"]

log = logging.getLogger(__name__)

POLL_S = 0.2
HEARTBEAT_TIMEOUT_S = float(os.environ.get("ARCHIPEL_HEARTBEAT_TIMEOUT_S", "15"))
MAX_RECOVERIES = 20
UNHEALTHY = ("degraded", "unreachable")


@dataclass
class _Step:
    """A snapshot of one step row, read in one transaction and acted on outside it."""

    run_id: str
    name: str
    spec: StepSpec
    row: dict[str, Any]
    attempt: dict[str, Any] | None


def _with_previous(new: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """A new checkpoint record carrying, as ``previous``, the newest earlier one held beyond the new one's site: what
    a recovery falls back to when the new one's only site dies before a copy of it leaves."""
    site = new["sites"][0]
    older = None
    if stored is not None:
        older = stored if any(s != site for s in stored["sites"]) else stored.get("previous")
    if older is None:
        return new
    return {**new, "previous": {k: v for k, v in older.items() if k != "previous"}}


class Reconciler:
    """Drives runs; see the module docstring. Thread-compatible: one ``tick`` at a time per instance."""

    def __init__(
        self, workspace: Workspace, engine: Engine, *, heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
    ) -> None:
        self.workspace, self.engine = workspace, engine
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._copies = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="archipel-ckpt")
        self._copying: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._copies.shutdown(wait=True)

    # -- the loop -----------------------------------------------------------------------------------------------

    def tick(self) -> int:
        """One pass over every active run; returns how many are still active."""
        with session_scope(self.engine) as session:
            run_ids = list(
                session.scalars(select(RunRow.id).where(RunRow.state.not_in([s.value for s in TERMINAL])))
            )
        for run_id in run_ids:
            try:
                self._run(run_id)
            except Exception:  # one broken run must not stop the others
                log.exception("reconciling run %s failed", run_id)
        return len(run_ids)

    def drive(self, run_id: str, *, timeout_s: float | None = None, on_tick: Any = None) -> str:
        """Tick until ``run_id`` is terminal; returns its final state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.tick()
            state = self.state_of(run_id)
            if on_tick is not None:
                on_tick()
            if state in TERMINAL:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {state} after {timeout_s} s")
            time.sleep(POLL_S)

    def state_of(self, run_id: str) -> str:
        with session_scope(self.engine) as session:
            row = session.get(RunRow, run_id)
            return row.state if row is not None else RunState.FAILED

    # -- one run ------------------------------------------------------------------------------------------------

    def _run(self, run_id: str) -> None:
        with session_scope(self.engine) as session:
            run = session.get(RunRow, run_id)
            assert run is not None
            spec = PipelineSpec.model_validate(run.spec)
            cancel = run.cancel_requested
            steps: dict[str, _Step] = {}
            for row in session.scalars(select(RunStepRow).where(RunStepRow.run_id == run_id)):
                attempt = session.scalars(
                    select(RunAttemptRow)
                    .where(RunAttemptRow.run_id == run_id, RunAttemptRow.step == row.step)
                    .order_by(RunAttemptRow.number.desc())
                ).first()
                steps[row.step] = _Step(
                    run_id,
                    row.step,
                    spec.steps[row.step],
                    _as_dict(row),
                    _as_dict(attempt) if attempt is not None else None,
                )
            plan, workdir, tags = run.plan, run.workdir, dict(run.tags)
        for name in spec.order():
            step = steps[name]
            state = RunState(step.row["state"])
            if cancel and not state.terminal:
                self._cancel(step, tags)
            elif state is RunState.RUNNING:
                self._watch(step, spec, plan, tags)
            elif state in (RunState.PENDING, RunState.PLACED, RunState.RECOVERING):
                needs = [RunState(steps[n].row["state"]) for n in step.spec.needs]
                if any(s in (RunState.FAILED, RunState.CANCELLED) for s in needs):
                    self._set_step(step, RunState.CANCELLED, "an upstream step did not succeed")
                elif all(s is RunState.SUCCEEDED for s in needs):
                    not_before = step.row["not_before"]
                    if not_before is None or not_before <= utcnow():
                        self._start(step, spec, steps, plan, workdir, tags)
        self._roll_up(run_id)

    def _roll_up(self, run_id: str) -> None:
        with session_scope(self.engine) as session:
            run = session.get(RunRow, run_id)
            assert run is not None
            states = [
                RunState(s)
                for s in session.scalars(select(RunStepRow.state).where(RunStepRow.run_id == run_id))
            ]
            active = [s for s in states if not s.terminal]
            if not active:
                if all(s is RunState.SUCCEEDED for s in states):
                    new = RunState.SUCCEEDED
                elif run.cancel_requested or (RunState.CANCELLED in states and RunState.FAILED not in states):
                    new = RunState.CANCELLED
                else:
                    new = RunState.FAILED
                run.ended_at = run.ended_at or utcnow()
            elif RunState.RECOVERING in active:
                new = RunState.RECOVERING
            elif RunState.RUNNING in active:
                new = RunState.RUNNING
            elif RunState.PLACED in active:
                new = RunState.PLACED
            else:
                new = RunState.PENDING
            if run.state != new:
                run.state, run.updated_at = new, utcnow()

    def _set_step(self, step: _Step, state: RunState, message: str = "", **fields: Any) -> None:
        with session_scope(self.engine) as session:
            row = session.scalars(
                select(RunStepRow).where(RunStepRow.run_id == step.run_id, RunStepRow.step == step.name)
            ).one()
            row.state, row.message = state, message
            for key, value in fields.items():
                setattr(row, key, value)
        step.row.update(state=state, message=message, **fields)

    # -- starting a step ----------------------------------------------------------------------------------------

    def _subjects(self, spec: PipelineSpec, name: str) -> list[Subject]:
        """The data a step touches: its dataset inputs and, through step outputs, its ancestors'."""
        out: list[Subject] = []
        for ref in spec.steps[name].input_refs().values():
            if ref.kind == "dataset":
                out.append(get_dataset(self.engine, ref.name).subject())
            elif ref.kind == "step_output" and ref.step is not None:
                out.extend(self._subjects(spec, ref.step))
        return out

    def _health(self) -> dict[str, str]:
        with session_scope(self.engine) as session:
            return {row.name: row.health for row in session.scalars(select(SiteRow))}

    def _candidates(
        self, step: _Step, plan: dict[str, Any], subjects: list[Subject]
    ) -> tuple[list[dict], list[str]]:
        """The plan's options for the step, best first, that are healthy and still allowed; and why the
        others are not."""
        placement = next(p for p in plan["steps"] if p["step"] == step.name)
        options = [placement["chosen"], *placement["alternatives"]]
        if step.row["state"] == RunState.RECOVERING and step.row["site"]:
            options.sort(key=lambda o: o["site"] != step.row["site"])  # the same site first, if healthy
        health = self._health()
        usable, why = [], []
        seen: set[str] = set()
        for option in options:
            site = option["site"]
            if health.get(site) in UNHEALTHY:
                if site not in seen:
                    why.append(f"{site}: {health[site]}")
                seen.add(site)
                continue
            ok, reason = allowed(self.workspace, "process", subjects, site)
            if not ok:
                why.append(f"{site}: {reason}")
                continue
            usable.append(option)
        for rejection in placement["rejections"]:
            why.append(
                f"{rejection['site']}: {rejection.get('rule') or rejection['kind']}: {rejection['detail']}"
            )
        return usable, why

    def _cache_key(self, step: _Step, plan: dict[str, Any], steps: dict[str, _Step], code: str) -> str:
        upstream = {
            (name, out): o.get("sha256") for name, st in steps.items() for out, o in st.row["outputs"].items()
        }
        return cache_key(step.spec, plan, upstream, code)

    def _reuse(self, step: _Step, key: str) -> bool:
        """Take the outputs of an earlier successful step with the same cache key, if they still exist."""
        with session_scope(self.engine) as session:
            earlier = session.scalars(
                select(RunStepRow)
                .where(RunStepRow.cache_key == key, RunStepRow.state == RunState.SUCCEEDED)
                .where(RunStepRow.run_id != step.run_id)
                .order_by(RunStepRow.id.desc())
            ).first()
            found = _as_dict(earlier) if earlier is not None else None
        if found is None:
            return False
        health = self._health()
        for output in found["outputs"].values():
            if health.get(output["site"]) in UNHEALTHY:
                return False
            try:
                if not self.workspace.storage(output["site"]).exists(output["key"]):
                    return False
            except ArchipelError:
                return False
        self._set_step(
            step,
            RunState.SUCCEEDED,
            f"cached: reused the outputs of run {found['run_id']}",
            outputs=found["outputs"],
            cached_from=found["run_id"],
            site=found["site"],
            offer=found["offer"],
            cache_key=key,
        )
        return True

    def _start(
        self,
        step: _Step,
        spec: PipelineSpec,
        steps: dict[str, _Step],
        plan: dict[str, Any],
        workdir: str,
        tags: dict[str, Any],
    ) -> None:
        code_dir = self.workspace.state_dir / "runs" / step.run_id / "code"
        code = (code_dir.parent / "code.sha256").read_text().strip()
        key = step.row["cache_key"] or self._cache_key(step, plan, steps, code)
        if (
            step.row["state"] == RunState.PENDING
            and step.row["checkpoint"] is None
            and plan.get("reuse", True)
            and self._reuse(step, key)
        ):
            return
        subjects = self._subjects(spec, step.name)
        candidates, why = self._candidates(step, plan, subjects)
        if not candidates:
            self._set_step(
                step,
                RunState(step.row["state"]),
                "waiting: no healthy site the policies allow; " + "; ".join(why),
            )
            return
        failures: list[str] = []
        for option in candidates:
            site = option["site"]
            refusal = self._budgets(step, option, tags)
            if refusal is not None:
                self._set_step(step, RunState.FAILED, refusal)
                return
            try:
                inputs = self._materialise(step, spec, steps, plan, site, tags)
                resume = self._checkpoint_at(step, site, subjects, tags)
                self._launch(step, option, inputs, resume, code_dir, workdir, key, tags)
                return
            except NoCapacity as exc:
                failures.append(f"{site}: no capacity ({exc})")
            except PolicyViolation as exc:
                failures.append(f"{site}: {exc.rule}: {exc}")
            except ArchipelError as exc:
                failures.append(f"{site}: {type(exc).__name__}: {exc}")
        message = "waiting: " + "; ".join(failures + why)
        if message != step.row["message"]:  # said once, not at every tick
            log.warning("run %s step %s %s", step.run_id, step.name, message)
        self._set_step(step, RunState(step.row["state"]), message)

    def _budgets(self, step: _Step, option: dict[str, Any], tags: dict[str, Any]) -> str | None:
        """Check the budgets this step's spending counts against: a hard one it would exceed refuses the
        launch (the message, audited); a soft one is audited as a warning and the launch goes ahead."""
        step_tags = {**tags, **step.spec.tags}
        expected = float(option.get("total_usd", 0.0))
        audit = AuditLog(self.engine, self.workspace.state_dir)
        with session_scope(self.engine) as session:
            status = {b.name: b for b in budget_status(session, self.workspace.spec.budgets)}
        for name, budget in self.workspace.spec.budgets.items():
            if any(step_tags.get(k) != v for k, v in budget.tags.items()):
                continue
            if budget.sites is not None and option["site"] not in budget.sites:
                continue
            spent = status[name].spent_usd
            if spent + expected <= budget.amount_usd:
                continue
            detail = (
                f"budget {name}: ${spent:.4f} of ${budget.amount_usd:g} spent this {budget.period}; "
                f"{step.name} at {option['site']} would add ${expected:.4f}"
            )
            hard = budget.enforcement == "hard"
            audit.record(action="budget.check", subject=f"{step.run_id}/{step.name}",
                outcome="refused" if hard else "allowed", reason=detail, rule=name,
                sites=[option["site"]])  # fmt: skip
            if hard:
                return f"refused by hard {detail}"
            log.warning("soft %s", detail)
        return None

    def _materialise(
        self,
        step: _Step,
        spec: PipelineSpec,
        steps: dict[str, _Step],
        plan: dict[str, Any],
        site: str,
        tags: dict[str, Any],
    ) -> dict[str, Any]:
        """Every input present at ``site``; returns the context's ``inputs`` section."""
        inputs: dict[str, Any] = {}
        for input_name, ref in step.spec.input_refs().items():
            if ref.kind == "dataset":
                pinned = DatasetRef(ref.name, ref.version or pinned_version(plan, ref.name))
                version = resolve_version(get_dataset(self.engine, ref.name), pinned)
                if site not in version.replicas:
                    replicate_dataset(self.workspace, self.engine, version.ref, site)
                    version = resolve_version(get_dataset(self.engine, ref.name), pinned)
                sealed = None
                if version.replicas.get(site):
                    enc = self.workspace.site(site).encryption
                    assert enc is not None
                    sealed = {
                        "key_env": enc.key_env,
                        "key_file": str(self.workspace.root / enc.key_file) if enc.key_file else None,
                    }
                inputs[input_name] = {
                    "kind": "dataset",
                    "ref": version.ref,
                    "key": version.key,
                    "sha256": version.sha256,
                    "size": version.bytes,
                    "sealed": sealed,
                }
            elif ref.kind == "step_output" and ref.step is not None:
                output = steps[ref.step].row["outputs"][ref.name]
                if output["site"] != site:
                    move_object(
                        self.workspace,
                        self.engine,
                        action="replicate",
                        subjects=self._subjects(spec, ref.step),
                        what=f"output {ref.step}.{ref.name} of run {step.run_id}",
                        key=output["key"],
                        sha256=output["sha256"],
                        size=output["size"],
                        src_site=output["site"],
                        dst_site=site,
                        run_id=step.run_id,
                        tags=tags,
                    )
                inputs[input_name] = {**output, "ref": str(ref), "sealed": None}
            else:  # a model: the version the plan pinned, copied here if the policies allow it
                from archipel.services.models import get_version, replicate_model

                pinned = pinned_model(plan, ref.name, ref.version)
                if pinned is None:
                    raise ArchipelError(f"the plan pinned no version of {ref}")
                version = get_version(self.engine, pinned)
                if site not in version.replicas:
                    version, _ = replicate_model(self.workspace, self.engine, version.ref, site)
                inputs[input_name] = {"kind": "model", "ref": f"models:/{version.ref}", "key": version.key,
                    "sha256": version.sha256, "size": version.bytes, "sealed": None}  # fmt: skip
        return inputs

    def _checkpoint_at(
        self, step: _Step, site: str, subjects: list[Subject], tags: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The latest checkpoint, present at ``site`` (copied from a healthy holder first). When no healthy site
        holds it (it was written just before its site died, before a copy left), the one before it, which was
        copied off that site: a few more steps redone rather than a run that waits for a dead site."""
        latest = step.row["checkpoint"]
        if latest is None:
            return None
        problems: list[str] = []
        for fallback, ckpt in ((False, latest), (True, latest.get("previous"))):
            if ckpt is None:
                continue
            try:
                placed = self._place_checkpoint(step, ckpt, site, subjects, tags)
            except PolicyViolation:
                raise
            except ArchipelError as exc:
                problems.append(str(exc))
                continue
            if fallback:
                log.warning("run %s step %s resumes from checkpoint %s: %s", step.run_id, step.name,
                            placed["seq"], problems[0])  # fmt: skip
                AuditLog(self.engine, self.workspace.state_dir).record(
                    action="run.checkpoint_fallback", subject=f"{step.run_id}/{step.name}", outcome="done",
                    reason=f"resumed from checkpoint {placed['seq']}: {problems[0]}", sites=[site],
                    details={"newest": latest["seq"], "used": placed["seq"]})  # fmt: skip
            if placed is not ckpt or fallback:  # a new holder, or the older one now the one to resume from
                self._set_step(step, RunState(step.row["state"]), step.row["message"], checkpoint=placed)
            return {k: placed[k] for k in ("key", "sha256", "size", "seq", "step")}
        raise ArchipelError("; ".join(problems))

    def _place_checkpoint(
        self, step: _Step, ckpt: dict[str, Any], site: str, subjects: list[Subject], tags: dict[str, Any]
    ) -> dict[str, Any]:
        """``ckpt`` as a copy at ``site``: as it is when the site holds it, else copied there from a healthy
        holder (the copy is the policy's to allow); its record with ``site`` among its holders."""
        if site in ckpt["sites"]:
            return ckpt
        health = self._health()
        holders = [s for s in ckpt["sites"] if health.get(s) not in UNHEALTHY]
        last: Exception | None = None
        for holder in holders:
            try:
                move_object(self.workspace, self.engine, action="derive_export", subjects=subjects,
                            what=f"checkpoint {ckpt['seq']} of run {step.run_id}", key=ckpt["key"],
                            sha256=ckpt["sha256"], size=ckpt["size"], src_site=holder, dst_site=site,
                            run_id=step.run_id, tags=tags)  # fmt: skip
                return {**ckpt, "sites": [*ckpt["sites"], site]}
            except PolicyViolation:
                raise
            except ArchipelError as exc:
                last = exc
        raise ArchipelError(
            f"checkpoint {ckpt['seq']} is held only at {', '.join(ckpt['sites'])}, none reachable"
            + (f" ({last})" if last else "")
        )

    def _launch(
        self,
        step: _Step,
        option: dict[str, Any],
        inputs: dict[str, Any],
        resume: dict[str, Any] | None,
        code_dir: Path,
        workdir: str,
        cache_key: str,
        tags: dict[str, Any],
    ) -> None:
        site = option["site"]
        number = (step.attempt["number"] if step.attempt else 0) + 1
        folder = self.workspace.state_dir / "runs" / step.run_id / step.name / f"attempt-{number}"
        site_spec = self.workspace.site(site)
        write_context(
            folder,
            {
                "run_id": step.run_id,
                "step": step.name,
                "attempt": number,
                "site": site,
                "storage": {
                    "url": self.workspace.storage_url(site),
                    "options": dict(site_spec.storage_options),
                },
                "inputs": inputs,
                "outputs": {n: o.model_dump(mode="json") for n, o in step.spec.outputs.items()},
                "checkpoint": {
                    "interval_s": step.spec.checkpoint,
                    "prefix": f"runs/{step.run_id}/{step.name}/checkpoints",
                    "resume": resume,
                },
            },
        )
        env = dict(step.spec.envs)
        secret_env = {}
        for var, source in step.spec.secrets.items():
            if source not in os.environ:
                raise ArchipelError(
                    f"secret {var} comes from ${source}, which is not set where archipel runs"
                )
            secret_env[var] = os.environ[source]
        # the job finds this installation's python (and archipel) first, as it would in its own image
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env.update(
            ARCHIPEL_RUN_DIR=str(folder),
            ARCHIPEL_RUN_ID=step.run_id,
            ARCHIPEL_STEP=step.name,
            ARCHIPEL_SITE=site,
            PYTHONUNBUFFERED="1",
        )
        r = step.spec.resources
        request = LaunchRequest(
            command=self._with_setup(step, site, code_dir),
            name=f"{step.run_id}-{step.name}"[:128],
            env=env,
            workdir=str((code_dir / step.spec.workdir).resolve()),
            resources=Resources(cpus=min(r.cpus, site_spec.capacity.cpus), memory_bytes=0),
            labels={"run": step.run_id, "step": step.name},
            secret_env=secret_env,
        )
        job_id = self.workspace.compute(site).launch(request)
        with session_scope(self.engine) as session:
            session.add(
                RunAttemptRow(
                    run_id=step.run_id,
                    step=step.name,
                    number=number,
                    site=site,
                    offer=option["offer"],
                    spot=option["spot"],
                    hourly_usd=option["hourly_usd"],
                    job_id=job_id,
                    state=RunState.RUNNING,
                    started_at=utcnow(),
                )
            )
        verb = "resumed from checkpoint " + str(resume["seq"]) if resume else "started"
        self._set_step(
            step,
            RunState.RUNNING,
            f"attempt {number} {verb} at {site}",
            site=site,
            offer=option["offer"],
            spot=option["spot"],
            hourly_usd=option["hourly_usd"],
            cache_key=cache_key,
        )
        log.info("run %s step %s attempt %d at %s (%s)", step.run_id, step.name, number, site, job_id)

    def _with_setup(self, step: _Step, site: str, code_dir: Path) -> str:
        if not step.spec.setup:
            return step.spec.run
        folder = code_dir / step.spec.workdir
        return with_setup(step.spec.run, step.spec.setup, folder, self.workspace.state_dir / "setup" / site)

    # -- watching a running step --------------------------------------------------------------------------------

    def _ingest(
        self, step: _Step, attempt: dict[str, Any], tags: dict[str, Any], plan: dict[str, Any]
    ) -> None:
        folder = self.workspace.state_dir / "runs" / step.run_id / step.name / f"attempt-{attempt['number']}"
        events, offset = read_events(folder, attempt["events_offset"])
        age = heartbeat_age(folder)
        attempt["heartbeat_age"] = age
        beat = utcnow() - timedelta(seconds=age) if age is not None else None
        recorded = attempt.get("heartbeat_at")
        if not events and (beat is None or (recorded is not None and (beat - recorded).total_seconds() < 5)):
            return  # nothing new: no write at every tick (the recorded heartbeat is informational, to 5 s)
        checkpoint, outputs = None, dict(step.row["outputs"])
        metrics = []
        models: list[dict[str, Any]] = []
        for event in events:
            kind = event.get("type")
            if kind == "metric":
                metrics.append(RunMetricRow(run_id=step.run_id, step=step.name, attempt=attempt["number"],
                    kind="metric", key=str(event["key"])[:255], value=float(event["value"]),
                    at_step=event.get("step")))  # fmt: skip
            elif kind in ("param", "artifact"):
                metrics.append(RunMetricRow(run_id=step.run_id, step=step.name, attempt=attempt["number"],
                    kind=kind, key=str(event["key"])[:255], text=str(event.get("text", ""))))  # fmt: skip
            elif kind == "checkpoint":  # the older ones are carried over below, from the stored one
                checkpoint = {k: event[k] for k in ("key", "sha256", "size", "seq", "step")}
                checkpoint["sites"] = [attempt["site"]]
            elif kind == "model":
                models.append(event)
            elif kind == "output":
                outputs[event["name"]] = {k: event[k] for k in ("key", "sha256", "size", "kind")}
                outputs[event["name"]]["site"] = attempt["site"]
        for event in models:  # registered before the offset moves past them (idempotent by run and sha256)
            self._register_model(step, attempt, event, plan)
        with session_scope(self.engine) as session:
            row = session.get(RunAttemptRow, attempt["id"])
            assert row is not None
            row.events_offset = offset
            if beat is not None:
                row.heartbeat_at = beat
            session.add_all(metrics)
            step_row = session.scalars(
                select(RunStepRow).where(RunStepRow.run_id == step.run_id, RunStepRow.step == step.name)
            ).one()
            if checkpoint is not None:  # else the stored one stands (a background copy may have added a site)
                checkpoint = _with_previous(checkpoint, step_row.checkpoint)
                step_row.checkpoint = checkpoint
            step_row.outputs = outputs
        attempt["events_offset"] = offset
        attempt["heartbeat_at"] = beat if beat is not None else recorded
        step.row.update(outputs=outputs, **({"checkpoint": checkpoint} if checkpoint is not None else {}))

    def _datasets_of(self, spec: PipelineSpec, name: str, plan: dict[str, Any]) -> list[str]:
        """The pinned dataset versions a step's outputs derive from (its own inputs and its ancestors')."""
        refs: list[str] = []
        for ref in spec.steps[name].input_refs().values():
            if ref.kind == "dataset":
                refs.append(f"{ref.name}@v{ref.version or pinned_version(plan, ref.name)}")
            elif ref.kind == "step_output" and ref.step is not None:
                refs.extend(self._datasets_of(spec, ref.step, plan))
        return list(dict.fromkeys(refs))

    def _register_model(
        self, step: _Step, attempt: dict[str, Any], event: dict[str, Any], plan: dict[str, Any]
    ) -> None:
        from archipel.registry.convert import Converted
        from archipel.services.models import get_model, register_version

        name, sha = event["name"], event["sha256"]
        try:
            if any(
                v.sha256 == sha and v.lineage.get("run_id") == step.run_id
                for v in get_model(self.engine, name).versions
            ):
                return
        except NotFound:
            pass
        site = attempt["site"]
        data = self.workspace.storage(site).get(event["key"])
        if hashlib.sha256(data).hexdigest() != sha:
            log.warning("model %s from run %s does not match its sha256; not registered", name, step.run_id)
            return
        spec = PipelineSpec.model_validate(plan["spec"])
        code = (self.workspace.state_dir / "runs" / step.run_id / "code.sha256").read_text().strip()
        register_version(
            self.workspace, self.engine, name, Converted(data, event["flavor"], event["signature"], event["check"]),
            site=site, datasets=self._datasets_of(spec, step.name, plan), stored=True,
            lineage={"run_id": step.run_id, "step": step.name, "attempt": attempt["number"], "code_revision": code},
            metrics=event.get("metrics"), params=event.get("params"), card=event.get("card"),
            description=event.get("description", ""),
        )  # fmt: skip

    def _fallback(self, step: _Step, spec: PipelineSpec, plan: dict[str, Any], tags: dict[str, Any]) -> None:
        """Copy the latest checkpoint, in the background, to the best other candidate site that may hold it."""
        ckpt = step.row["checkpoint"]
        if ckpt is None or len(ckpt["sites"]) > 1:
            return
        marker = (step.run_id, step.name, ckpt["seq"])
        with self._lock:
            if marker in self._copying:
                return
            self._copying.add(marker)
        subjects = self._subjects(spec, step.name)
        placement = next(p for p in plan["steps"] if p["step"] == step.name)
        health = self._health()
        sites = [o["site"] for o in [placement["chosen"], *placement["alternatives"]]]
        target = next(
            (
                s
                for s in dict.fromkeys(sites)
                if s not in ckpt["sites"]
                and health.get(s) not in UNHEALTHY
                and allowed(self.workspace, "derive_export", subjects, s)[0]
            ),
            None,
        )
        if target is None:
            return

        def copy() -> None:
            try:
                move_object(self.workspace, self.engine, action="derive_export", subjects=subjects,
                    what=f"checkpoint {ckpt['seq']} of run {step.run_id}", key=ckpt["key"], sha256=ckpt["sha256"],
                    size=ckpt["size"], src_site=ckpt["sites"][0], dst_site=target, run_id=step.run_id,
                    tags=tags)  # fmt: skip
            except ArchipelError as exc:
                log.warning("copying checkpoint %s to %s failed: %s", ckpt["key"], target, exc)
                return
            with session_scope(self.engine) as session:
                row = session.scalars(
                    select(RunStepRow).where(RunStepRow.run_id == step.run_id, RunStepRow.step == step.name)
                ).one()
                if (
                    row.checkpoint
                    and row.checkpoint["seq"] == ckpt["seq"]
                    and target not in row.checkpoint["sites"]
                ):
                    row.checkpoint = {**row.checkpoint, "sites": [*row.checkpoint["sites"], target]}

        self._copies.submit(copy)

    def _watch(self, step: _Step, spec: PipelineSpec, plan: dict[str, Any], tags: dict[str, Any]) -> None:
        attempt = step.attempt
        assert attempt is not None
        self._ingest(step, attempt, tags, plan)
        self._fallback(step, spec, plan, tags)
        site = attempt["site"]
        try:
            status = self.workspace.compute(site).status(attempt["job_id"])
        except ArchipelError as exc:
            self._end_attempt(step, attempt, "LOST", None, f"the site's compute does not answer: {exc}", tags)
            self._recover(step, f"attempt {attempt['number']} lost at {site}: {exc}")
            return
        if not status.state.terminal:
            age = attempt.get("heartbeat_age")
            if age is not None and age > self.heartbeat_timeout_s:
                with contextlib.suppress(ArchipelError):
                    self.workspace.compute(site).cancel(attempt["job_id"], grace_s=0)
                reason = f"no heartbeat for {age:.0f} s"
                self._end_attempt(step, attempt, "LOST", None, reason, tags)
                self._recover(step, f"attempt {attempt['number']} at {site}: {reason}")
            return
        self._ingest(step, attempt, tags, plan)  # whatever it wrote before it ended
        code = status.exit_code
        if status.state is JobState.SUCCEEDED:
            missing = [n for n in step.spec.outputs if n not in step.row["outputs"]]
            self._end_attempt(step, attempt, "SUCCEEDED", code, "exit 0", tags)
            if missing:
                self._set_step(
                    step, RunState.FAILED, f"exited 0 without publishing outputs: {', '.join(missing)}"
                )
            else:
                self._set_step(step, RunState.SUCCEEDED, f"succeeded at {site} (attempt {attempt['number']})")
            return
        if status.state is JobState.FAILED and code is not None and code > 0:
            self._end_attempt(step, attempt, "FAILED", code, f"exit code {code}", tags)
            failures = step.row["failures"] + 1
            if failures > step.spec.retries:
                self._set_step(step, RunState.FAILED, f"exit code {code}; {step.spec.retries} retries used",
                    failures=failures)  # fmt: skip
            else:
                delay = min(60.0, 2.0 ** (failures - 1))
                self._set_step(step, RunState.PENDING,
                    f"exit code {code}; retry {failures} of {step.spec.retries} in {delay:g} s",
                    failures=failures, not_before=utcnow() + timedelta(seconds=delay))  # fmt: skip
            return
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"job {status.state.lower()}"
        self._end_attempt(step, attempt, "LOST", code, why, tags)
        self._recover(step, f"attempt {attempt['number']} at {site}: {why}")

    def _recover(self, step: _Step, why: str) -> None:
        recoveries = step.row["recoveries"] + 1
        if recoveries > MAX_RECOVERIES:
            self._set_step(step, RunState.FAILED, f"{why}; gave up after {MAX_RECOVERIES} recoveries")
            return
        self._set_step(step, RunState.RECOVERING, why, recoveries=recoveries)

    def _end_attempt(
        self,
        step: _Step,
        attempt: dict[str, Any],
        state: str,
        code: int | None,
        reason: str,
        tags: dict[str, Any],
    ) -> None:
        now = utcnow()
        hours = max(0.0, (now - attempt["started_at"]).total_seconds() / 3600)
        site = self.workspace.site(attempt["site"])
        with session_scope(self.engine) as session:
            row = session.get(RunAttemptRow, attempt["id"])
            assert row is not None
            row.state, row.exit_code, row.exit_reason, row.ended_at = state, code, reason, now
            row.cost_usd = hours * attempt["hourly_usd"]
            add_entry(session, kind="compute", site=attempt["site"], provider=site.provider, quantity=hours,
                unit="h", unit_price_usd=attempt["hourly_usd"], tags={**tags, "step": step.name},
                run_id=step.run_id, description=f"{step.name} attempt {attempt['number']} ({attempt['offer']}"
                f"{', spot' if attempt['spot'] else ''}): {reason}")  # fmt: skip

    def _cancel(self, step: _Step, tags: dict[str, Any]) -> None:
        attempt = step.attempt
        if attempt is not None and attempt["state"] == RunState.RUNNING:
            try:
                self.workspace.compute(attempt["site"]).cancel(attempt["job_id"])
            except ArchipelError as exc:
                log.warning("cancelling %s failed: %s", attempt["job_id"], exc)
            self._end_attempt(step, attempt, "CANCELLED", None, "cancelled", tags)
        self._set_step(step, RunState.CANCELLED, "cancelled")


def _as_dict(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}
