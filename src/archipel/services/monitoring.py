"""Monitoring deployments where their data is, and closing the loop: drift → alert → retrain → gate → roll out.

``run_monitor`` checks a deployment's recent request samples at every site that holds some: a drift job
(:mod:`archipel.monitoring.site_job`) is launched on that site's own compute, next to the samples and to the model
version's drift reference (both stay there), and writes only aggregates back to the site's storage; those
(scores, verdicts, histograms with at least ``min_count_per_bin`` rows a bin) are what reach the metadata store.
The job goes to the site of its samples directly, not through the planner's optimizer: its
input cannot move (raw samples never leave their site), so that site is the only placement; the policy engine is
still asked (``process`` of the model's data there) and its decision audited. ``check_slo`` reads the replicas'
own counters (error rate, p99). Either can raise an alert: a row, an audit entry, a log line, the webhook of
``alerts:`` and, through the gateways, Prometheus gauges. An alert fires the ``triggers:`` that name its
deployment and kind: the pipeline runs where the policies allow, the version it registers meets the alias's
gate, and a version that passes rolls out to the deployment (a rolling update). Every step is audited with its
reason; a refusal anywhere stops the loop and says why.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from archipel.cost.ledger import add_entry
from archipel.db.engine import session_scope
from archipel.db.orm import AlertRow, DriftReportRow, ReplicaRow
from archipel.db.types import utcnow
from archipel.errors import ArchipelError, NotFound, PolicyViolation
from archipel.executor.launch import launch_module
from archipel.executor.moves import allowed
from archipel.models.deployment import DeploymentSpec
from archipel.models.monitoring import TriggerSpec
from archipel.policy.audit import AuditLog
from archipel.services.deployments import deploy, get_deployment, hourly_share
from archipel.services.models import VersionView, get_model, get_version, promote
from archipel.workspace import Workspace

__all__ = [
    "LoopOutcome",
    "check_all",
    "check_slo",
    "due_checks",
    "fire_triggers",
    "gauges",
    "list_alerts",
    "monitor_status",
    "raise_alert",
    "run_monitor",
]

log = logging.getLogger("archipel.monitoring")
JOB_CPUS = 0.5
JOB_TIMEOUT_S = 300.0


def _report_view(row: DriftReportRow) -> dict[str, Any]:
    report = row.report or {}
    features = (report.get("report") or {}).get("features") or []
    return {
        "id": row.id, "deployment": row.deployment, "site": row.site, "model": row.model, "version": row.version,
        "since": row.since.isoformat(), "until": row.until.isoformat(), "rows": row.rows, "verdict": row.verdict,
        "share_drifted": row.share_drifted, "drifted": [f["feature"] for f in features if f.get("drifted")],
        "features": features, "predictions": (report.get("report") or {}).get("predictions") or [],
        "histograms": report.get("histograms") or {}, "min_count_per_bin": report.get("min_count_per_bin"),
        "note": report.get("note"), "schema": report.get("schema"), "created_at": row.created_at.isoformat(),
    }  # fmt: skip


def _sample_sites(engine: Engine, deployment: str, version: int) -> list[str]:
    with session_scope(engine) as session:
        rows = session.scalars(
            select(ReplicaRow.site).where(ReplicaRow.deployment == deployment, ReplicaRow.version == version)
        )
        return sorted(set(rows))


def _reference(version: VersionView) -> dict[str, Any]:
    pointer = version.card.get("drift_reference")
    if not pointer:
        raise NotFound(
            f"{version.ref} has no drift reference: register it with evaluation data (ctx.log_model(..., "
            "eval_data=(X, y)) or archipel.register_model(..., eval_data=...))"
        )
    return pointer


def run_monitor(workspace: Workspace, engine: Engine, name: str, *, window_s: float | None = None,
                until: float | None = None, timeout_s: float = JOB_TIMEOUT_S) -> list[dict[str, Any]]:  # fmt: skip
    """Check ``name``'s samples at every site that holds some (see the module docstring); the stored reports."""
    deployment = get_deployment(engine, name)
    settings = DeploymentSpec.model_validate(deployment.spec).monitoring
    version = get_version(engine, f"{deployment.model}/{deployment.version}")
    pointer = _reference(version)
    until = until if until is not None else time.time()
    since = until - (window_s if window_s is not None else settings.window_s)
    audit = AuditLog(engine, workspace.state_dir)
    jobs: dict[str, tuple[str, str, float]] = {}
    for site in _sample_sites(engine, name, version.version):
        if site not in version.replicas:  # (no reference there: the model itself never was)
            continue
        ok, why = allowed(workspace, "process", version.subjects(), site)
        audit.record(action="policy.process", subject=f"drift check of {name}", sites=[site],
                     outcome="allowed" if ok else "refused", reason=why or "read where they are")  # fmt: skip
        if not ok:  # the samples stay where they are, unread
            continue
        export_ok, export_why = allowed(workspace, "aggregate_export", version.subjects(), site)
        audit.record(action="policy.aggregate_export", subject=f"drift report of {name}", sites=[site],
                     outcome="allowed" if export_ok else "refused",
                     reason=export_why or "statistics may leave the site")  # fmt: skip
        output_key = f"monitoring/{name}/{site}/{int(until)}-{secrets.token_hex(4)}.json"
        spec = {
            "prefix": f"samples/{version.model}/{version.version}/{site}", "since": since, "until": until,
            "reference_key": pointer["key"], "reference_sha256": pointer["sha256"], "output_key": output_key,
            "min_count_per_bin": settings.min_count_per_bin, "drift_share": settings.drift_share,
        }  # fmt: skip
        job_id = launch_module(workspace, site, "archipel.monitoring.site_job", spec,
                               folder=workspace.state_dir / "monitoring" / name, name=f"drift-{name}-{site}",
                               cpus=JOB_CPUS, labels={"deployment": name, "kind": "drift"})  # fmt: skip
        jobs[site] = (job_id, output_key, time.monotonic(), None if export_ok else export_why)
    reports = []
    for site, (job_id, output_key, started, withheld) in jobs.items():
        compute = workspace.compute(site)
        deadline = started + timeout_s
        while not (status := compute.status(job_id)).state.terminal and time.monotonic() < deadline:
            time.sleep(0.1)
        hours = (time.monotonic() - started) / 3600
        if not status.state.terminal:
            compute.cancel(job_id, grace_s=1)
        with session_scope(engine) as session:
            add_entry(session, kind="compute", site=site, provider=workspace.site(site).provider, quantity=hours,
                      unit="h", unit_price_usd=hourly_share(workspace, site, JOB_CPUS),
                      tags={"deployment": name, "job": "drift"}, deployment_id=name,
                      description=f"drift check of {name} at {site}")  # fmt: skip
        if withheld is not None:  # computed where the samples are, and kept there: not read from here
            result = {"rows": 0, "report": None, "withheld": True, "key": output_key,
                      "note": f"the report stays at {site} ({output_key}): {withheld}"}  # fmt: skip
            reports.append(_store(workspace, engine, audit, name, site, version, since, until, result, 0))
            continue
        try:
            result = json.loads(workspace.storage(site).get(output_key))
        except ArchipelError:
            text, _ = compute.logs(job_id)
            result = {
                "rows": 0,
                "report": None,
                "failed": True,
                "note": f"the drift job failed: {text.strip()[-300:]}",
            }
        reports.append(
            _store(workspace, engine, audit, name, site, version, since, until, result, settings.min_rows)
        )
    return reports


def _store(workspace: Workspace, engine: Engine, audit: AuditLog, name: str, site: str, version: VersionView,
           since: float, until: float, result: dict[str, Any], min_rows: int) -> dict[str, Any]:  # fmt: skip
    report = result.get("report")
    if result.get("withheld"):
        verdict, share = "withheld", None
    elif report is None or result.get("rows", 0) < min_rows:
        verdict, share = ("failed" if result.get("failed") else "too-few-rows"), None
        result = {
            **result,
            "note": result.get("note") or f"{result.get('rows', 0)} rows sampled, {min_rows} needed",
        }
    else:
        verdict, share = ("drift" if report["dataset_drift"] else "ok"), float(report["share_drifted"])
    with session_scope(engine) as session:
        row = DriftReportRow(deployment=name, site=site, model=version.model, version=version.version,
                             since=datetime.fromtimestamp(since, UTC), until=datetime.fromtimestamp(until, UTC),
                             rows=int(result.get("rows", 0)), verdict=verdict, share_drifted=share,
                             report=result)  # fmt: skip
        session.add(row)
        session.flush()
        view = _report_view(row)
    if verdict == "withheld":
        reason = view["note"]
    elif share is None:
        reason = f"{view['rows']} rows; {verdict}"
    else:
        drifted = view["drifted"]
        reason = (f"{view['rows']} rows; {verdict}: {len(drifted)} of {len(view['features'])} features drifted "
                  f"({', '.join(drifted)})")  # fmt: skip
    audit.record(action="monitor.drift", subject=name, sites=[site], outcome=verdict, reason=reason,
                 details={"report_id": view["id"], "share_drifted": share})  # fmt: skip
    if verdict == "drift":
        outcomes = raise_alert(workspace, engine, "drift", name, site, reason, {"report_id": view["id"]})
        view["loop"] = [o.as_json() for o in outcomes]
    return view


def check_slo(workspace: Workspace, engine: Engine, name: str) -> list[dict[str, Any]]:
    """The replicas' own counters against the deployment's ``monitoring.slo``: an ``slo`` alert per breach; the
    figures per site (answers, error rate, p99 upper bound in ms)."""
    from archipel.serving.metrics import scrape

    deployment = get_deployment(engine, name)
    slo = DeploymentSpec.model_validate(deployment.spec).monitoring.slo
    by_site: dict[str, dict[str, Any]] = {}
    for replica in deployment.replicas:
        text, _ = scrape(replica["url"], timeout=2)
        if text is None:
            continue
        figures = by_site.setdefault(replica["site"], {"answers": 0, "errors": 0, "buckets": {}})
        _add_metrics(figures, text)
    out = []
    for site, figures in sorted(by_site.items()):
        answers, buckets = figures["answers"], figures["buckets"]
        rate = figures["errors"] / answers if answers else 0.0
        p99 = _quantile_bound(buckets, answers, 0.99)
        row = {"site": site, "answers": answers, "error_rate": round(rate, 6),
               "p99_ms": None if p99 is None else round(p99 * 1000, 3)}  # fmt: skip
        out.append(row)
        breaches = []
        if answers and rate > slo.error_rate:
            breaches.append(f"error rate {rate:.2%} > {slo.error_rate:.2%}")
        if p99 is not None and p99 * 1000 > slo.p99_ms:
            breaches.append(f"p99 <= {p99 * 1000:g} ms bucket > {slo.p99_ms:g} ms")
        if breaches:
            raise_alert(workspace, engine, "slo", name, site, "; ".join(breaches), row)
    return out


def _add_metrics(figures: dict[str, Any], text: str) -> None:
    for line in text.splitlines():
        if line.startswith("archipel_inference_requests_total{"):
            count = int(float(line.rsplit(" ", 1)[1]))
            figures["answers"] += count
            if 'status="5' in line:
                figures["errors"] += count
        elif line.startswith("archipel_inference_request_duration_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            value = float("inf") if bound == "+Inf" else float(bound)
            figures["buckets"][value] = figures["buckets"].get(value, 0) + int(float(line.rsplit(" ", 1)[1]))


def _quantile_bound(buckets: dict[float, int], total: int, q: float) -> float | None:
    """The upper bound of the histogram bucket holding quantile ``q`` (Prometheus buckets are cumulative)."""
    if not total:
        return None
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return None


def raise_alert(workspace: Workspace, engine: Engine, kind: str, deployment: str, site: str | None, reason: str,
                details: dict[str, Any]) -> list[LoopOutcome]:  # fmt: skip
    """Record, audit, log and send an alert, then fire the triggers it matches; what they did."""
    with session_scope(engine) as session:
        row = AlertRow(kind=kind, deployment=deployment, site=site, reason=reason, details=details)
        session.add(row)
        session.flush()
        alert = {"id": row.id, "kind": kind, "deployment": deployment, "site": site, "reason": reason,
                 "details": details, "created_at": row.created_at.isoformat()}  # fmt: skip
    audit = AuditLog(engine, workspace.state_dir)
    audit.record(action="monitor.alert", subject=deployment, sites=[site] if site else [], outcome=kind,
                 reason=reason, details={"alert_id": alert["id"]})  # fmt: skip
    log.warning("%s alert for %s at %s: %s", kind, deployment, site or "-", reason)
    if (url := workspace.spec.alerts.webhook) is not None:
        try:
            request = urllib.request.Request(url, data=json.dumps(alert).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except OSError as exc:  # the alert stands; the hook's failure is on record
            audit.record(
                action="monitor.webhook", subject=deployment, outcome="failed", reason=str(exc)[:200]
            )
    return fire_triggers(workspace, engine, alert)


@dataclass(frozen=True)
class LoopOutcome:
    """What a trigger did with an alert: how far the loop went and why it stopped there."""

    trigger: str
    stage: str
    """skipped, planned, ran, registered, promoted, rolled-out, or failed-at-<stage>."""
    reason: str
    run_id: str | None = None
    version: int | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_triggers(workspace: Workspace) -> list[dict[str, Any]]:
    """The ``triggers:`` of ``archipel.yaml`` by name: alert kinds, deployment, pipeline, gate alias, rollout,
    cooldown."""
    return [
        {"name": name, **trigger.model_dump()} for name, trigger in sorted(workspace.spec.triggers.items())
    ]


def fire_triggers(workspace: Workspace, engine: Engine, alert: dict[str, Any]) -> list[LoopOutcome]:
    outcomes = []
    for name, trigger in sorted(workspace.spec.triggers.items()):
        if trigger.deployment == alert["deployment"] and alert["kind"] in trigger.on:
            outcomes.append(_fire(workspace, engine, name, trigger, alert))
    return outcomes


def _fire(workspace: Workspace, engine: Engine, name: str, trigger: TriggerSpec,
          alert: dict[str, Any]) -> LoopOutcome:  # fmt: skip
    from archipel.services.plan import load_plan_spec, make_plan
    from archipel.services.reconciler import Reconciler
    from archipel.services.runs import submit_run

    audit = AuditLog(engine, workspace.state_dir)

    def stop(stage: str, reason: str, **more: Any) -> LoopOutcome:
        outcome = LoopOutcome(name, stage, reason, **more)
        audit.record(action="trigger." + stage.removeprefix("failed-at-"), subject=name,
                     outcome="refused" if stage.startswith("failed") or stage == "skipped" else "done",
                     reason=reason, details={"alert_id": alert["id"], **outcome.as_json()})  # fmt: skip
        return outcome

    since = utcnow() - timedelta(seconds=trigger.cooldown_s)
    if fired := audit.entries(action="trigger.fire", subject=name, since=since):
        return stop("skipped", f"fired {len(fired)} time(s) in the last {trigger.cooldown_s:g} s (cooldown)")
    audit.record(action="trigger.fire", subject=name, outcome="done",
                 reason=f"{alert['kind']} alert {alert['id']} of {alert['deployment']}: {alert['reason']}")  # fmt: skip
    path = (workspace.root / trigger.pipeline).resolve()
    try:
        planned = make_plan(workspace, engine, load_plan_spec(path))
    except ArchipelError as exc:
        return stop("failed-at-plan", f"the retraining pipeline {trigger.pipeline} cannot be placed: {exc}")
    run_id = submit_run(workspace, engine, planned, workdir=path.parent, reuse=False)  # retrain, never reuse
    reconciler = Reconciler(workspace, engine)
    try:
        state = reconciler.drive(run_id, timeout_s=3600)
    finally:
        reconciler.close()
    if state != "SUCCEEDED":
        return stop("failed-at-run", f"the retraining run {run_id} ended {state}", run_id=run_id)
    model = get_deployment(engine, trigger.deployment).model
    made = [v for v in get_model(engine, model).versions if v.lineage.get("run_id") == run_id]
    if not made:
        return stop("failed-at-register", f"run {run_id} registered no version of {model}", run_id=run_id)
    version = made[-1].version
    try:
        promote(workspace, engine, model, version, to=trigger.promote_to)
    except PolicyViolation as exc:
        return stop("failed-at-gate", str(exc), run_id=run_id, version=version)
    if not trigger.rollout:
        return stop("promoted", f"{model}/{version} is {trigger.promote_to}; rollout is off", run_id=run_id,
                    version=version)  # fmt: skip
    current = get_deployment(engine, trigger.deployment)
    spec = DeploymentSpec.model_validate(current.spec)
    if "@" not in spec.model:  # pinned to a number: follow the alias from now on
        spec = spec.model_copy(update={"model": f"{model}@{trigger.promote_to}"})
    try:
        deploy(workspace, engine, spec)
    except ArchipelError as exc:
        return stop("failed-at-rollout", str(exc), run_id=run_id, version=version)
    return stop("rolled-out", f"{model}/{version} serves {trigger.deployment} (was v{current.version})",
                run_id=run_id, version=version)  # fmt: skip


def due_checks(engine: Engine, tried: dict[str, float], now: float | None = None) -> list[str]:
    """Deployments (not down, their version with a drift reference) whose last check, or last attempt in
    ``tried`` (name -> time.time(), updated here), is older than their ``monitoring.every_s``."""
    from archipel.services.deployments import list_deployments

    now = time.time() if now is None else now
    with session_scope(engine) as session:
        newest = select(DriftReportRow.deployment, func.max(DriftReportRow.created_at)).group_by(
            DriftReportRow.deployment
        )
        last = {d: t.timestamp() for d, t in session.execute(newest)}
    due = []
    for view in list_deployments(engine):
        every = DeploymentSpec.model_validate(view.spec).monitoring.every_s
        if view.state == "down" or now - max(last.get(view.name, 0.0), tried.get(view.name, 0.0)) < every:
            continue
        tried[view.name] = now
        if get_version(engine, f"{view.model}/{view.version}").card.get("drift_reference"):
            due.append(view.name)
    return due


def check_all(workspace: Workspace, engine: Engine, names: list[str]) -> None:
    """What ``archipel server`` runs in the background for :func:`due_checks`: drift and service levels, each
    deployment on its own (one failing check does not stop the others; it is logged)."""
    for name in names:
        try:
            run_monitor(workspace, engine, name)
            check_slo(workspace, engine, name)
        except ArchipelError as exc:
            log.warning("monitoring %s failed: %s", name, exc)


def _latest(deployment: str | None = None) -> Any:
    """The ids of the newest report of every (deployment, site), as a subquery."""
    query = select(func.max(DriftReportRow.id)).group_by(DriftReportRow.deployment, DriftReportRow.site)
    return query if deployment is None else query.where(DriftReportRow.deployment == deployment)


def monitor_status(engine: Engine, deployment: str | None = None) -> list[dict[str, Any]]:
    """The latest drift report of every (deployment, site), by deployment and site."""
    with session_scope(engine) as session:
        rows = session.scalars(select(DriftReportRow).where(DriftReportRow.id.in_(_latest(deployment))))
        return sorted((_report_view(r) for r in rows), key=lambda r: (r["deployment"], r["site"]))


def gauges(
    engine: Engine,
) -> tuple[dict[tuple[str, str], tuple[str, float | None]], dict[tuple[str, str], int]]:
    """What gateways export: the latest verdict and drifted share per (deployment, site), alerts per (deployment,
    kind)."""
    with session_scope(engine) as session:
        verdicts = session.execute(
            select(DriftReportRow.deployment, DriftReportRow.site, DriftReportRow.verdict, DriftReportRow.share_drifted)
            .where(DriftReportRow.id.in_(_latest()))
        )  # fmt: skip
        drift = {(d, site): (verdict, share) for d, site, verdict, share in verdicts}
        alerts = session.execute(
            select(AlertRow.deployment, AlertRow.kind, func.count()).group_by(
                AlertRow.deployment, AlertRow.kind
            )
        )
        return drift, {(d, kind): n for d, kind, n in alerts}


def list_alerts(engine: Engine, deployment: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    with session_scope(engine) as session:
        query = select(AlertRow).order_by(AlertRow.id.desc()).limit(limit)
        if deployment is not None:
            query = query.where(AlertRow.deployment == deployment)
        return [
            {"id": r.id, "kind": r.kind, "deployment": r.deployment, "site": r.site, "reason": r.reason,
             "details": r.details, "created_at": r.created_at.isoformat()}
            for r in session.scalars(query)
        ]  # fmt: skip
