"""``archipel deploy``: a model version served at sites, each replica a model server launched through the site's
compute backend (so it is supervised, logged and cancelled like any job), listening on loopback.

Deploying pins the version behind the alias, copies it to every chosen site (a ``derive_export`` decision of the
policy engine, so a model never runs where its training data forbids), starts the replicas, waits until each
answers ``/v2/health/ready`` and records them; gateways read the replicas from the metadata store. Updating to a
new version starts the new replicas first and stops the old ones once the new ones are ready (no request sees a
missing replica); rolling back is an update to the previous version. ``down`` stops every replica. Replica-hours
go to the cost ledger when a replica stops.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from archipel.cost.ledger import add_entry
from archipel.db.engine import session_scope
from archipel.db.orm import DeploymentRow, ReplicaRow
from archipel.db.types import utcnow
from archipel.errors import ArchipelError, NotFound, SiteUnavailable, SpecError
from archipel.executor.launch import launch_module
from archipel.executor.moves import allowed
from archipel.models.deployment import DeploymentSpec
from archipel.policy.audit import AuditLog
from archipel.services.models import VersionView, get_version, replicate_model
from archipel.services.offers import OfferRequest, find_offers
from archipel.workspace import Workspace

__all__ = [
    "DeploymentView",
    "autoscale",
    "deploy",
    "desired_replicas",
    "down",
    "get_deployment",
    "list_deployments",
    "rollback_deployment",
    "write_scrape_targets",
]

READY_TIMEOUT_S = 90.0
REPLICA_CPUS = 0.5
SECRET_ENV = "ARCHIPEL_REPLICA_SECRET"
"""When set where ``deploy`` runs, replicas require it (``X-Archipel-Replica-Secret``) and gateways started with the
same variable send it."""
DRAIN_S = 2.5
"""Between recording new replicas and stopping old ones: longer than a gateway's table refresh (1 s) plus a
request's time, so no gateway sends to a replica that is already gone."""
_LISTENING = re.compile(r"LISTENING (\d+)")


@dataclass(frozen=True)
class DeploymentView:
    name: str
    model: str
    version: int
    state: str
    spec: dict[str, Any]
    replicas: list[dict[str, Any]]
    previous_version: int | None
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "updated_at": self.updated_at.isoformat()}


def _view(session: Any, row: DeploymentRow) -> DeploymentView:
    replicas = session.scalars(
        select(ReplicaRow)
        .where(ReplicaRow.deployment == row.name, ReplicaRow.state == "running")
        .order_by(ReplicaRow.id)
    )
    return DeploymentView(
        row.name, row.model, row.version, row.state, dict(row.spec),
        [{"id": r.id, "site": r.site, "jurisdiction": r.jurisdiction, "version": r.version, "url": r.url,
          "job_id": r.job_id, "hourly_usd": r.hourly_usd} for r in replicas],
        row.previous_version, row.updated_at,
    )  # fmt: skip


def list_deployments(engine: Engine) -> list[DeploymentView]:
    with session_scope(engine) as session:
        return [
            _view(session, r) for r in session.scalars(select(DeploymentRow).order_by(DeploymentRow.name))
        ]


def get_deployment(engine: Engine, name: str) -> DeploymentView:
    with session_scope(engine) as session:
        row = session.get(DeploymentRow, name)
        if row is None:
            raise NotFound(f"no deployment {name!r}")
        return _view(session, row)


def _sites(workspace: Workspace, spec: DeploymentSpec, version: VersionView) -> list[str]:
    if spec.sites != "auto":
        return list(spec.sites)
    subjects = version.subjects()
    return [site for site in workspace.spec.sites if allowed(workspace, "derive_export", subjects, site)[0]]


def _start_replica(
    workspace: Workspace, name: str, version: VersionView, site: str, spec: DeploymentSpec
) -> dict:
    compute = workspace.compute(site)
    launch = {
        "key": version.key, "sha256": version.sha256, "name": version.model, "version": version.version,
        "signature": version.signature, "max_batch": spec.batching.max_batch,
        "max_wait_ms": spec.batching.max_wait_ms, "sample_rate": spec.sample_rate,
        "sample_prefix": f"samples/{version.model}/{version.version}/{site}",
    }  # fmt: skip
    secret = os.environ.get(SECRET_ENV)
    if secret:  # the replica takes requests only with it; it reaches the replica by inheritance, never a file
        launch["secret_env"] = SECRET_ENV
    job_id = launch_module(workspace, site, "archipel.serving.launch", launch,
                           folder=workspace.state_dir / "replicas" / name, name=f"replica-{name}-{site}",
                           cpus=REPLICA_CPUS, labels={"deployment": name},
                           secret_env={SECRET_ENV: secret} if secret else None)  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    port = None
    while time.monotonic() < deadline:
        text, _ = compute.logs(job_id)
        if port is None and (m := _LISTENING.search(text)):
            port = int(m[1])
        if port is not None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/health/ready", timeout=1
                ) as response:
                    if response.status == 200:
                        return {"site": site, "url": f"http://127.0.0.1:{port}", "job_id": job_id}
            except OSError:
                pass
        if compute.status(job_id).state.terminal:
            raise SiteUnavailable(f"the replica of {name} at {site} exited: {text[-500:]}")
        time.sleep(0.1)
    compute.cancel(job_id, grace_s=1)
    raise SiteUnavailable(f"the replica of {name} at {site} was not ready within {READY_TIMEOUT_S:g} s")


def _stop(workspace: Workspace, engine: Engine, replicas: list[dict[str, Any]]) -> None:
    """Stop replicas (``id``, ``site``, ``job_id``: jobs cancelled), and charge their hours to the ledger."""
    for r in replicas:
        with contextlib.suppress(ArchipelError):
            workspace.compute(r["site"]).cancel(r["job_id"], grace_s=2)
        with session_scope(engine) as session:
            row = session.get(ReplicaRow, r["id"])
            if row is None or row.state not in ("running", "draining"):
                continue
            row.state, row.stopped_at = "stopped", utcnow()
            hours = (row.stopped_at - row.started_at).total_seconds() / 3600
            add_entry(session, kind="serving", site=row.site, provider=workspace.site(row.site).provider,
                quantity=hours, unit="h", unit_price_usd=row.hourly_usd, tags={"deployment": row.deployment},
                deployment_id=row.deployment, description=f"replica {row.id} of {row.deployment}")  # fmt: skip


def hourly_share(workspace: Workspace, site: str, cpus: float = REPLICA_CPUS) -> float:
    """What ``cpus`` reserved at ``site`` cost an hour (a replica's half CPU by default): their share of the site's
    cheapest on-demand offer from the price catalog (clouds) or of the amortized CPU price (owned hardware)."""
    found = find_offers(workspace, OfferRequest(cpus=cpus, sites=(site,)))
    if not found:
        return 0.0
    cheapest = found[0]
    return (
        cheapest.hourly * min(1.0, cpus / cheapest.offer.vcpus) if cheapest.offer.vcpus else cheapest.hourly
    )


def write_scrape_targets(workspace: Workspace, engine: Engine) -> Path:
    """Prometheus ``file_sd`` targets for every running replica, across sites (rewritten atomically)."""
    groups = []
    for view in list_deployments(engine):
        for replica in view.replicas:
            groups.append({
                "targets": [replica["url"].removeprefix("http://")],
                "labels": {"deployment": view.name, "site": replica["site"], "jurisdiction": replica["jurisdiction"],
                           "model": view.model, "version": str(replica["version"])},
            })  # fmt: skip
    folder = workspace.state_dir / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "archipel-replicas.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def deploy(workspace: Workspace, engine: Engine, spec: DeploymentSpec) -> DeploymentView:
    """Create or update ``spec.name``; see the module docstring."""
    version = get_version(engine, spec.model)
    sites = _sites(workspace, spec, version)
    if not sites:
        raise NotFound(f"no site may serve {version.ref}: its training data allows no copy anywhere")
    for site in sites:  # policy-checked copies first: a refusal stops the deploy before anything starts
        replicate_model(workspace, engine, version.ref, site)
    canary = get_version(engine, spec.canary.model) if spec.canary is not None else None
    if canary is not None:
        if canary.model != version.model:
            raise SpecError(f"the canary {canary.ref} is not a version of {version.model}")
        for site in sites:
            replicate_model(workspace, engine, canary.ref, site)
    started: list[dict[str, Any]] = []
    try:
        for site in sites:
            for _ in range(max(1, spec.replicas.min)):
                started.append(
                    {**_start_replica(workspace, spec.name, version, site, spec), "version": version.version}
                )
            if canary is not None:
                started.append(
                    {**_start_replica(workspace, spec.name, canary, site, spec), "version": canary.version}
                )
    except ArchipelError:
        for r in started:
            workspace.compute(r["site"]).cancel(r["job_id"], grace_s=1)
        raise
    with session_scope(engine) as session:
        row = session.get(DeploymentRow, spec.name)
        old = list(
            session.scalars(
                select(ReplicaRow).where(ReplicaRow.deployment == spec.name, ReplicaRow.state == "running")
            )
        )
        old_ids = [{"id": r.id, "site": r.site, "job_id": r.job_id} for r in old]
        if row is None:
            row = DeploymentRow(name=spec.name, spec=spec.model_dump(mode="json"), model=version.model,
                                version=version.version, state="ready")  # fmt: skip
            session.add(row)
        else:
            if row.version != version.version:
                row.previous_version = row.version
            row.spec, row.model, row.version, row.state, row.updated_at = (
                spec.model_dump(mode="json"),
                version.model,
                version.version,
                "ready",
                utcnow(),
            )
        for r in started:
            jurisdiction = workspace.site(r["site"]).jurisdiction
            session.add(ReplicaRow(deployment=spec.name, site=r["site"], jurisdiction=jurisdiction,
                version=r["version"], url=r["url"], job_id=r["job_id"], state="running",
                hourly_usd=hourly_share(workspace, r["site"])))  # fmt: skip
    if old_ids:  # the new replicas are ready and recorded; gateways re-read the table, then the old ones stop
        time.sleep(DRAIN_S)
    _stop(workspace, engine, old_ids)
    write_scrape_targets(workspace, engine)
    AuditLog(engine, workspace.state_dir).record(action="deployment.deploy", subject=spec.name, sites=sites,
        outcome="done", reason=f"{version.ref} on {len(started)} replicas")  # fmt: skip
    return get_deployment(engine, spec.name)


def rollback_deployment(workspace: Workspace, engine: Engine, name: str) -> DeploymentView:
    current = get_deployment(engine, name)
    if current.previous_version is None:
        raise NotFound(f"deployment {name} has no previous version")
    spec = DeploymentSpec.model_validate(
        {**current.spec, "model": f"{current.model}/{current.previous_version}"}
    )
    return deploy(workspace, engine, spec)


def down(workspace: Workspace, engine: Engine, name: str) -> DeploymentView:
    with session_scope(engine) as session:
        row = session.get(DeploymentRow, name)
        if row is None:
            raise NotFound(f"no deployment {name!r}")
        running = select(ReplicaRow).where(ReplicaRow.deployment == name, ReplicaRow.state == "running")
        replicas = [{"id": r.id, "site": r.site, "job_id": r.job_id} for r in session.scalars(running)]
    _stop(workspace, engine, replicas)
    with session_scope(engine) as session:
        row = session.get(DeploymentRow, name)
        assert row is not None
        row.state, row.updated_at = "down", utcnow()
    write_scrape_targets(workspace, engine)
    AuditLog(engine, workspace.state_dir).record(action="deployment.down", subject=name, outcome="done",
                                                 reason=f"stopped {len(replicas)} replicas")  # fmt: skip
    return get_deployment(engine, name)


# -- autoscaling ---------------------------------------------------------------------------------------------


def desired_replicas(current: int, qps: float, target_qps: float, low: int, high: int) -> int:
    """Replicas a site should run for ``qps`` at ``target_qps`` each, within [low, high]; scales down one at a time
    and only when the load would still fit below 80 % of the target afterwards (no flapping at the boundary)."""
    want = max(low, min(high, math.ceil(qps / target_qps) if qps > 0 else low))
    if want < current:
        fits = current - 1 >= low and qps <= 0.8 * target_qps * (current - 1)
        return current - 1 if fits else current
    return want


def _requests_served(url: str) -> float | None:
    from archipel.serving.metrics import scrape

    text, _ = scrape(url, timeout=1)  # with the replica secret when set (without it the replicas answer 401)
    if text is None:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("archipel_inference_requests_total"))  # fmt: skip


def autoscale(
    workspace: Workspace, engine: Engine, name: str, *, seen: dict[int, tuple[float, float]]
) -> dict[str, tuple[int, int]]:
    """One autoscaling step for a deployment with ``replicas.target_qps``: per site, the measured request rate of
    its replicas (from their own counters, since the previous step) against the target; starts or stops replicas.
    ``seen`` (kept by the caller between steps) maps a replica to (when, its count) at the previous step.
    Returns site -> (replicas before, after)."""
    view = get_deployment(engine, name)
    spec = DeploymentSpec.model_validate(view.spec)
    target = spec.replicas.target_qps
    if target is None or view.state == "down":
        return {}
    now = time.monotonic()
    changes: dict[str, tuple[int, int]] = {}
    by_site: dict[str, list[dict[str, Any]]] = {}
    for replica in view.replicas:
        if replica["version"] == view.version:
            by_site.setdefault(replica["site"], []).append(replica)
    version = get_version(engine, f"{view.model}/{view.version}")
    for site, replicas in by_site.items():
        qps = 0.0
        for replica in replicas:
            count = _requests_served(replica["url"])
            if count is None:
                continue
            before = seen.get(replica["id"])
            seen[replica["id"]] = (now, count)
            if before is not None and now > before[0]:
                qps += max(0.0, count - before[1]) / (now - before[0])
        want = desired_replicas(len(replicas), qps, target, max(1, spec.replicas.min), spec.replicas.max)
        if want > len(replicas):
            started = [
                _start_replica(workspace, name, version, site, spec) for _ in range(want - len(replicas))
            ]
            with session_scope(engine) as session:
                for r in started:
                    session.add(ReplicaRow(deployment=name, site=site, jurisdiction=workspace.site(site).jurisdiction,
                        version=version.version, url=r["url"], job_id=r["job_id"], state="running",
                        hourly_usd=hourly_share(workspace, site)))  # fmt: skip
        elif want < len(replicas):
            victim = max(replicas, key=lambda r: r["id"])
            with session_scope(engine) as session:  # out of the table first, so gateways stop sending to it
                row = session.get(ReplicaRow, victim["id"])
                if row is not None:
                    row.state = "draining"
            time.sleep(DRAIN_S)
            _stop(workspace, engine, [victim])
        if want != len(replicas):
            changes[site] = (len(replicas), want)
            reason = f"{len(replicas)} -> {want} replicas at {qps:.1f} req/s (target {target:g})"
            AuditLog(engine, workspace.state_dir).record(
                action="deployment.scale", subject=name, sites=[site], outcome="done", reason=reason
            )
    if changes:
        write_scrape_targets(workspace, engine)
    return changes
