"""The web dashboard: one page over every site, served at ``/`` with its assets under ``/ui/``, and the few read
routes it needs beyond the API's own.

The page and its assets are plain files (``static/``: HTML, CSS and ES modules, charts drawn as SVG by
``charts.js``); they hold no data. Everything the page shows comes from ``/api/v1/...`` with the bearer token the
user typed, which the page keeps in ``sessionStorage`` and sends in the ``Authorization`` header only, never in a
URL. The assets are sent with a Content-Security-Policy that allows scripts, styles and requests to this origin
only, so nothing the page renders from the API can load or run anything else.

Routes added here, each behind a ``read`` token like the API's:

- ``GET /api/v1/sites/activity``: per site, what runs and serves there now, and what it holds and has cost.
- ``GET /api/v1/deployments/{name}/traffic``: each running replica's own counters, read from its ``/metrics``.
- ``GET /api/v1/deployments/{name}/failover``: the gateways' ejections, unhealthy marks and re-admissions, per site,
  from the audit log's ``gateway.*`` entries.
- ``GET /api/v1/cost/timeline``: spend per time bucket (day, hour, minute or second) split by site, provider or kind.
- ``GET /api/v1/cost/tags``: the tag keys the ledger's entries carry, so the page can offer to group spend by each.
- ``GET /api/v1/models/{name}/gates``: each alias's gate clauses from ``archipel.yaml``, evaluated for every version.
"""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from archipel.api.app import context, guard
from archipel.errors import SpecError
from archipel.serving.metrics import scrape

__all__ = ["BUCKETS", "mount", "parse_replica_metrics", "pick_bucket", "router"]

STATIC = Path(__file__).parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
ASSET_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new archipel's assets show at once
}
SCRAPE_TIMEOUT_S = 1.5
"""How long the traffic page waits for a replica's ``/metrics`` (``serving.metrics.scrape`` sends the replica
secret when one is set, as Prometheus scrapes do)."""

BUCKETS: dict[str, int] = {"day": 86400, "hour": 3600, "minute": 60, "second": 1}
"""Time buckets of the cost timeline, in seconds, largest first."""
MAX_BUCKETS = 2000
"""More buckets than this is a request for a larger bucket."""
AUTO_MIN_BUCKETS = 6
"""``bucket=auto`` takes the largest bucket that still splits the ledger's time span into this many."""

JSONObject = dict[str, Any]
Name = Annotated[
    str, PathParam(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="A deployment's or model's name.")
]
router = APIRouter()


def mount(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` and its assets under ``/ui/``, and add the read routes it needs."""

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return _asset("index.html")

    @app.get("/ui/{path:path}", include_in_schema=False)
    def asset(path: str) -> Response:
        return _asset(path)

    app.include_router(router)


def _asset(path: str) -> Response:
    """A file under ``static/`` (never outside it, never a folder); 404 otherwise."""
    root = STATIC.resolve()
    file = (root / path).resolve()
    if not file.is_relative_to(root) or not file.is_file() or file.suffix not in MEDIA_TYPES:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(file, media_type=MEDIA_TYPES[file.suffix], headers=ASSET_HEADERS)


# -- sites --------------------------------------------------------------------------------------------------------
@guard(router, "GET", "/api/v1/sites/activity", "read", tags=["sites"])
def site_activity(request: Request) -> list[JSONObject]:
    """Per site: attempts running there now (and of which runs), serving replicas (and of which deployments),
    dataset and model versions it holds a copy of, and its spend to date."""
    from archipel.cost.report import report
    from archipel.db import session_scope
    from archipel.services.data import list_datasets
    from archipel.services.deployments import list_deployments
    from archipel.services.models import list_models
    from archipel.services.runs import list_runs

    ws, engine = context(request)
    rows: dict[str, JSONObject] = {
        name: {"site": name, "attempts_running": 0, "runs": [], "replicas": 0, "deployments": [],
               "dataset_copies": 0, "model_copies": 0, "spent_usd": 0.0}
        for name in ws.spec.sites
    }  # fmt: skip
    for run in list_runs(engine, limit=1000):
        for attempt in run.attempts:
            row = rows.get(attempt["site"])
            if row is not None and attempt["ended_at"] is None:
                row["attempts_running"] += 1
                if run.id not in row["runs"]:
                    row["runs"].append(run.id)
    for deployment in list_deployments(engine):
        for replica in deployment.replicas:
            row = rows.get(replica["site"])
            if row is not None:
                row["replicas"] += 1
                if deployment.name not in row["deployments"]:
                    row["deployments"].append(deployment.name)
    for dataset in list_datasets(engine):
        for version in dataset.versions:
            for site in version.replicas if version.erased_at is None else ():
                if site in rows:
                    rows[site]["dataset_copies"] += 1
    for model in list_models(engine):
        for model_version in model.versions:
            for site in model_version.replicas:
                if site in rows:
                    rows[site]["model_copies"] += 1
    with session_scope(engine) as session:
        for cost in report(session, by="site").rows:
            if cost.key in rows:
                rows[cost.key]["spent_usd"] = round(cost.total_usd, 6)
    return list(rows.values())


# -- deployments --------------------------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_replica_metrics(text: str) -> JSONObject:
    """A model server's Prometheus text as the dashboard shows it: answers by HTTP status, errors (5xx), the mean
    and the upper bounds of the p50 and p99 latency buckets in ms, rows per call, and requests in flight."""
    by_status: Counter[str] = Counter()
    buckets: Counter[float] = Counter()
    seconds = batch_sum = batch_count = 0.0
    in_flight = 0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = (
            match["name"],
            dict(_LABEL.findall(match["labels"] or "")),
            float(match["value"]),
        )
        if name == "archipel_inference_requests_total":
            by_status[labels.get("status", "?")] += int(value)
        elif name == "archipel_inference_request_duration_seconds_bucket":
            bound = labels.get("le", "+Inf")
            buckets[float("inf") if bound == "+Inf" else float(bound)] += int(value)
        elif name == "archipel_inference_request_duration_seconds_sum":
            seconds += value
        elif name == "archipel_inference_batch_size_sum":
            batch_sum += value
        elif name == "archipel_inference_batch_size_count":
            batch_count += value
        elif name == "archipel_inference_in_flight":
            in_flight = int(value)
    requests = sum(by_status.values())

    def bound_ms(q: float) -> float | None:
        for bound in sorted(buckets):
            if requests and buckets[bound] >= q * requests:
                return None if bound == float("inf") else round(bound * 1000, 3)
        return None

    return {
        "requests": requests,
        "errors": sum(n for status, n in by_status.items() if status.startswith("5")),
        "by_status": dict(sorted(by_status.items())),
        "mean_ms": round(seconds / requests * 1000, 3) if requests else None,
        "p50_ms": bound_ms(0.5),
        "p99_ms": bound_ms(0.99),
        "rows_per_call": round(batch_sum / batch_count, 2) if batch_count else None,
        "in_flight": in_flight,
    }


@guard(router, "GET", "/api/v1/deployments/{name}/traffic", "read", tags=["deployments"])
def deployment_traffic(request: Request, name: Name) -> JSONObject:
    """Each running replica's counters since it started, read from its own ``/metrics`` now (replicas listen on
    loopback URLs recorded at deploy time): requests, errors (5xx), latency buckets, rows per call, in flight.
    A replica that does not answer is listed with ``reachable: false`` and why."""
    from archipel.services.deployments import get_deployment

    _, engine = context(request)
    view = get_deployment(engine, name)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(view.replicas)))) as pool:
        scraped = list(pool.map(lambda url: scrape(url, SCRAPE_TIMEOUT_S), [r["url"] for r in view.replicas]))
    replicas = []
    for replica, (text, problem) in zip(view.replicas, scraped, strict=True):
        figures = parse_replica_metrics(text) if text is not None else None
        replicas.append({**replica, "reachable": text is not None, "problem": problem, "traffic": figures})
    reached = [r["traffic"] for r in replicas if r["traffic"] is not None]
    return {
        "deployment": view.name,
        "version": view.version,
        "state": view.state,
        "at": datetime.now(UTC).isoformat(),
        "replicas": replicas,
        "total": {
            "requests": sum(t["requests"] for t in reached),
            "errors": sum(t["errors"] for t in reached),
        },
    }


_REPLICA_ID = re.compile(r"\breplica (\d+)\b")
FAILOVER_ACTIONS = {
    "gateway.eject": "ejections",
    "gateway.unhealthy": "unhealthy",
    "gateway.readmit": "readmits",
}


@guard(router, "GET", "/api/v1/deployments/{name}/failover", "read", tags=["deployments"])
def deployment_failover(
    request: Request, name: Name, limit: Annotated[int, Query(ge=1, le=10000)] = 500
) -> JSONObject:
    """What the gateways did to the deployment's replicas, from the audit log (newest ``limit`` ``gateway.*``
    entries): per site the count of ejections, unhealthy marks and re-admissions and the latest event, per replica
    its latest event (``out`` while an ejection or unhealthy mark is its latest), and the events, oldest first."""
    from archipel.policy.audit import AuditLog
    from archipel.services.deployments import get_deployment

    ws, engine = context(request)
    view = get_deployment(engine, name)
    events = AuditLog(engine, ws.state_dir).entries(action="gateway.", subject=name, limit=limit)
    by_site: dict[str, JSONObject] = {}
    latest_by_replica: dict[int, JSONObject] = {}
    out = []
    for entry in events:
        if entry.action not in FAILOVER_ACTIONS:
            continue
        found = _REPLICA_ID.search(entry.reason)
        replica_id = int(found.group(1)) if found else None
        event = {"seq": entry.seq, "at": entry.at.isoformat(), "action": entry.action, "replica": replica_id,
                 "site": entry.sites[0] if entry.sites else None, "reason": entry.reason}  # fmt: skip
        out.append(event)
        site = by_site.setdefault(
            event["site"] or "?", {"ejections": 0, "unhealthy": 0, "readmits": 0, "last": None}
        )
        site[FAILOVER_ACTIONS[entry.action]] += 1
        site["last"] = event
        if replica_id is not None:
            latest_by_replica[replica_id] = event
    running = {r["id"] for r in view.replicas}
    replicas = {
        str(rid): {"last": event, "out": event["action"] != "gateway.readmit", "running": rid in running}
        for rid, event in sorted(latest_by_replica.items())
    }
    return {"deployment": view.name, "by_site": by_site, "replicas": replicas, "events": out}


# -- cost ---------------------------------------------------------------------------------------------------------
def pick_bucket(first: datetime, last: datetime) -> str:
    """The largest bucket that splits [first, last] into at least ``AUTO_MIN_BUCKETS``; else the smallest."""
    span = (last - first).total_seconds()
    for name, size in BUCKETS.items():
        if span / size >= AUTO_MIN_BUCKETS:
            return name
    return "second"


def _floor(at: datetime, size: int) -> datetime:
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % size, UTC)


@guard(router, "GET", "/api/v1/cost/timeline", "read", tags=["cost"])
def cost_timeline(
    request: Request,
    bucket: Literal["auto", "day", "hour", "minute", "second"] = "auto",
    by: Literal["site", "provider", "kind"] = "site",
    since_hours: Annotated[float | None, Query(gt=0, le=24 * 3650)] = None,
) -> JSONObject:
    """Spend per UTC time bucket from the first ledger entry to the last (empty buckets included, so a line has
    no gaps), each split by ``by``; ``auto`` picks the largest bucket that gives at least six points. ``keys``
    lists the groups largest first; ``cumulative_usd`` runs along the points."""
    from archipel.cost.ledger import entries
    from archipel.db import session_scope

    _, engine = context(request)
    since = datetime.now(UTC) - timedelta(hours=since_hours) if since_hours else None
    with session_scope(engine) as session:
        lines = entries(session, since=since)
    if not lines:
        return {"bucket": None if bucket == "auto" else bucket, "by": by, "keys": [], "points": [],
                "total_usd": 0.0}  # fmt: skip
    first, last = lines[0].at, lines[-1].at
    chosen = pick_bucket(first, last) if bucket == "auto" else bucket
    size = BUCKETS[chosen]
    start, end = _floor(first, size), _floor(last, size)
    count = int((end - start).total_seconds()) // size + 1
    if count > MAX_BUCKETS:
        raise SpecError(
            f"{count} buckets of a {chosen} is too many (at most {MAX_BUCKETS}): use a larger bucket or since_hours"
        )
    sums: dict[datetime, Counter[str]] = {
        start + timedelta(seconds=i * size): Counter() for i in range(count)
    }
    totals: Counter[str] = Counter()
    for line in lines:
        key = getattr(line, by)
        sums[_floor(line.at, size)][key] += line.amount_usd
        totals[key] += line.amount_usd
    keys = [k for k, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]
    points, running = [], 0.0
    for at, values in sums.items():
        total = sum(values.values())
        running += total
        points.append({"at": at.isoformat(), "values": {k: round(values[k], 9) for k in keys if values[k]},
                       "total_usd": round(total, 9), "cumulative_usd": round(running, 9)})  # fmt: skip
    return {
        "bucket": chosen,
        "by": by,
        "keys": keys,
        "points": points,
        "total_usd": round(sum(totals.values()), 6),
    }


@guard(router, "GET", "/api/v1/cost/tags", "read", tags=["cost"])
def cost_tags(request: Request) -> list[JSONObject]:
    """Every tag key on the ledger's entries with how many entries carry it and its distinct values, most used
    first."""
    from archipel.cost.ledger import entries
    from archipel.db import session_scope

    _, engine = context(request)
    with session_scope(engine) as session:
        lines = entries(session)
    counts: Counter[str] = Counter()
    values: dict[str, set[str]] = {}
    for line in lines:
        for key, value in line.tags.items():
            counts[key] += 1
            values.setdefault(key, set()).add(str(value))
    return [{"key": key, "entries": n, "values": sorted(values[key])}
            for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]  # fmt: skip


# -- models -------------------------------------------------------------------------------------------------------
@guard(router, "GET", "/api/v1/models/{name}/gates", "read", tags=["models"])
def model_gates(request: Request, name: Name) -> JSONObject:
    """Each alias's gate (``models:`` in ``archipel.yaml``) evaluated for every version against the versions the
    aliases point to now: would a promotion of that version to that alias pass, and which clauses fail. Evaluated
    only, never audited (promoting is ``POST /api/v1/models/{name}/promote``)."""
    from archipel.models.gates import evaluate_gate
    from archipel.services.models import get_model

    ws, engine = context(request)
    model = get_model(engine, name)
    spec = ws.spec.models.get(name)
    gates = dict(spec.gates) if spec is not None else {}
    by_number = {v.version: v for v in model.versions}
    current = {alias: by_number[v].metrics if v in by_number else None for alias, v in model.aliases.items()}
    out: dict[str, JSONObject] = {}
    for alias, clauses in sorted(gates.items()):
        try:
            versions = {
                str(v.version): [r.as_json() for r in evaluate_gate(list(clauses), v.metrics, current)]
                for v in model.versions
            }
        except ValueError as exc:  # a clause that does not parse: 400 naming it, as promoting would refuse it
            raise SpecError(f"gate of {name}@{alias}: {exc}") from exc
        out[alias] = {
            "clauses": list(clauses),
            "points_to": model.aliases.get(alias),
            "versions": {v: {"passed": all(r["passed"] for r in results), "clauses": results}
                         for v, results in versions.items()},
        }  # fmt: skip
    return {"model": name, "gates": out}
