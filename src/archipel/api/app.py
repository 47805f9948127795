"""The REST API: one FastAPI app over the services (``archipel.services``), no business logic of its own.

Every route but ``/api/health`` needs a bearer token (``Authorization: Bearer arch_...``): 401 without a valid one
(with ``WWW-Authenticate: Bearer``), 403 when its scope is below the route's. Reading needs ``read``; acting on
data, runs, models and deployments ``deploy``; tokens ``admin``. Errors are JSON ``{"error": ..., "kind": ...}``
with the status of their kind: 400 a bad spec or argument, 404 a missing thing, 409 a conflict, a policy refusal
(with its rule) or no site that can take the work, 413 an upload beyond the server's limit, 503 a site or backend
that failed. Files (a dataset's version, a job's folder) are the bodies of the routes in ``archipel.api.uploads``.
Tokens are read from the header only, never from the URL, and never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from archipel import __version__
from archipel.api.schemas import (
    AlertOut,
    AuditEntryOut,
    AuditVerifyOut,
    CancelOut,
    CostReportOut,
    DatasetOut,
    DecisionOut,
    DeploymentOut,
    DriftReportOut,
    HealthOut,
    LogLineOut,
    ModelOut,
    ModelReplicaOut,
    MonitorRunOut,
    NewTokenOut,
    OfferOut,
    PlanOut,
    PromotionOut,
    ReplicatedOut,
    RunLogsOut,
    RunOut,
    SiteCheckOut,
    SiteOut,
    TokenOut,
    TriggerOut,
)
from archipel.errors import ArchipelError, PolicyViolation, http_status_for
from archipel.models.deployment import DeploymentSpec
from archipel.models.job import JobSpec, PipelineSpec
from archipel.services.tokens import Token, verify_token
from archipel.workspace import Workspace

__all__ = ["SCOPE_KEY", "context", "create_app", "guard", "need"]

log = logging.getLogger("archipel.api")

Scope = Literal["read", "infer", "deploy", "admin"]
NDJSON = "application/x-ndjson"
SCOPE_KEY = "x-archipel-scope"
"""Each guarded operation in the OpenAPI document names the scope it needs under this key."""


JSONObject = dict[str, Any]
NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""Sites, datasets, models and deployments are named like this (``archipel.models.common``)."""
Name = Annotated[str, Path(pattern=NAME, description="A name: lowercase letters, digits and '-'.")]
RunId = Annotated[
    str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,100}$", description="A run id (`archipel runs ls`).")
]
TokenId = Annotated[str, Path(pattern=r"^[a-z0-9]{12}$", description="A token id (`archipel tokens ls`).")]
DataRef = Annotated[str, Query(pattern=r"^[a-z0-9][a-z0-9-]{0,62}(@v[1-9][0-9]{0,8})?$",
                               description="A dataset: NAME or NAME@vN.")]  # fmt: skip
SiteName = Annotated[str, Query(pattern=NAME, description="A site's name.")]
Since = Annotated[float | None, Query(gt=0, le=24 * 3650, description="Only the last this many hours.")]
TAGS = (
    "sites",
    "data",
    "plans",
    "runs",
    "models",
    "deployments",
    "tokens",
    "cost",
    "audit",
    "monitoring",
    "health",
)


BEARER = HTTPBearer(auto_error=False, description="A token from `archipel tokens create`.")


class Problem(BaseModel):
    """An error: its message (a whole sentence), its kind, and for a policy refusal the rule."""

    error: str
    kind: str
    rule: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in ((400, "Bad input"), (401, "No valid token"), (403, "The token's scope is too low"),
                       (404, "Not found"), (409, "Refused by a policy, or a conflict"),
                       (503, "A site or backend failed"))
}  # fmt: skip


class CheckSites(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sites: list[str] | None = Field(default=None, description="Sites to check (default: all).")
    timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Seconds to wait for each site's probe process."
    )


class Replicate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(pattern=NAME, description="The destination site.")
    version: int | None = Field(default=None, ge=1, description="Default: the latest.")
    streams: int = Field(default=4, ge=1, le=64, description="Parallel streams.")


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    to: str = Field(default="production", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")


class ReplicateModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(pattern=NAME, description="The destination site.")
    version: int | None = Field(default=None, ge=1, description="A version number...")
    alias: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]{0,62}$", description="...or an alias.")


class MonitorRun(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window_s: float | None = Field(
        default=None,
        gt=0,
        le=366 * 86400,
        description="How far back, in seconds (default: the deployment's window).",
    )


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: Scope
    name: str = Field(default="", max_length=200)
    deployment: str | None = Field(default=None, max_length=200)
    origins: list[str] = Field(default_factory=list, max_length=32)
    ttl_days: float | None = Field(default=None, gt=0, le=3650)


def _same_path(route: Any, path: str) -> bool:
    """Whether ``route``'s path pattern matches ``path``."""
    regex = getattr(route, "path_regex", None)
    return bool(regex and regex.match(path))


def _every_route(routes: list[Any]) -> Iterator[Any]:
    """The routes of the app and of the routers it includes (FastAPI >= 0.16x keeps an included router as one entry
    of ``app.routes``, not its routes copied in; none is included with a prefix here)."""
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            yield from _every_route(inner)
        else:
            yield route


def _close_pattern_properties(node: Any) -> None:
    """pydantic says which keys a dict takes with ``patternProperties`` and rejects the others: say so."""
    if isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_pattern_properties(value)
    elif isinstance(node, list):
        for value in node:
            _close_pattern_properties(value)


def need(scope: str) -> Callable[..., Token]:
    """A dependency: the request's bearer token, verified against the store and at least ``scope``."""

    def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
    ) -> Token:
        token = verify_token(request.app.state.engine, credentials.credentials if credentials else None)
        token.require(scope)
        return token

    return check


def guard(
    router: APIRouter | FastAPI, method: str, path: str, scope: str, **kwargs: Any
) -> Callable[..., Any]:
    """Declare a route on ``router`` that needs ``scope`` (named in the OpenAPI document under :data:`SCOPE_KEY`),
    with its error responses documented."""

    def wrap(func: Callable[..., Any]) -> Any:
        responses = {**ERRORS, **kwargs.pop("responses", {})}
        extra = {**kwargs.pop("openapi_extra", {}), SCOPE_KEY: scope}
        return router.api_route(path, methods=[method], dependencies=[Depends(need(scope))], responses=responses,
                                openapi_extra=extra, **kwargs)(func)  # fmt: skip

    return wrap


def context(request: Request) -> tuple[Workspace, Engine]:
    """The workspace and metadata store the app serves (for routes declared outside :func:`create_app`)."""
    return request.app.state.workspace, request.app.state.engine


def create_app(workspace: Workspace, engine: Engine) -> FastAPI:
    """The API over ``workspace`` and its metadata store, with the dashboard (``archipel.api.dashboard``)."""
    app = FastAPI(title="archipel", version=__version__, description=__doc__,
                  openapi_tags=[{"name": n} for n in TAGS])  # fmt: skip
    app.state.workspace, app.state.engine = workspace, engine
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _close_pattern_properties(plain_openapi())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    def route(method: str, path: str, scope: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        return guard(app, method, path, scope, **kwargs)

    @app.exception_handler(ArchipelError)
    def archipel_error(request: Request, err: ArchipelError) -> JSONResponse:
        status = http_status_for(err)  # errors.HTTP_STATUS: one table for the API and the library
        body = {"error": str(err), "kind": type(err).__name__}
        if isinstance(err, PolicyViolation):
            body["rule"] = err.rule
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, err)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    def internal_error(request: Request, err: Exception) -> JSONResponse:
        """A bug (or an answer that does not match its documented schema): logged with its traceback, answered in
        the API's shape without its details."""
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return JSONResponse({"error": "internal error (logged by the server)", "kind": "InternalError"},
                            status_code=500)  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        """Starlette's own errors (a body that is not JSON, a method the path does not take) in the same shape; a
        405 lists every method the path takes (each method is its own route, so Starlette names only one)."""
        headers = dict(err.headers or {})
        if err.status_code == 405:
            routes = [r for r in _every_route(app.routes) if _same_path(r, request.url.path)]
            methods = {m for r in routes for m in getattr(r, "methods", ())}
            headers["Allow"] = ", ".join(sorted(methods - {"HEAD"}))
        return JSONResponse({"error": str(err.detail), "kind": "HTTPError"}, status_code=err.status_code,
                            headers=headers or None)  # fmt: skip

    @app.get("/api/health", tags=["health"])
    def health() -> HealthOut:
        """Public: the process answers, and its version."""
        return {"status": "ok", "version": __version__}

    # -- sites ---------------------------------------------------------------------------------------------------
    @route("GET", "/api/v1/sites", "read", tags=["sites"])
    def sites() -> list[SiteOut]:
        """Every site with its provider, region, jurisdiction, storage, compute, capacity and last health."""
        from archipel.services.sites import list_sites

        return [v.as_json() for v in list_sites(workspace, engine)[0]]

    @route("POST", "/api/v1/sites/check", "deploy", tags=["sites"])
    def check(body: Annotated[CheckSites, Body()] = CheckSites()) -> list[SiteCheckOut]:
        """Check sites for real: a probe written, read and deleted in storage, a process run on compute."""
        from archipel.services.sites import check_sites

        return [r.as_json() for r in check_sites(workspace, engine, body.sites, timeout_s=body.timeout_s)]

    @route("GET", "/api/v1/offers", "read", tags=["sites"])
    def offers(
        cpus: Annotated[float, Query(gt=0, le=4096)] = 1,
        memory_gib: Annotated[float, Query(ge=0, le=65536)] = 0,
        spot: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> list[OfferOut]:
        """The cheapest offers across the sites' price catalogs that fit the request."""
        from archipel.services.offers import OfferRequest, find_offers

        rows = find_offers(workspace, OfferRequest(cpus=cpus, memory_gib=memory_gib, spot=spot))
        return [r.as_json() for r in rows[:limit]]

    # -- data and policies ---------------------------------------------------------------------------------------
    @route("GET", "/api/v1/datasets", "read", tags=["data"])
    def datasets() -> list[DatasetOut]:
        """Every dataset: classification, jurisdiction, home site, latest version and its replicas."""
        from archipel.services.data import list_datasets

        return [v.as_json() for v in list_datasets(engine)]

    @route("GET", "/api/v1/datasets/{name}", "read", tags=["data"])
    def dataset(name: Name) -> DatasetOut:
        """One dataset with every version and where each is."""
        from archipel.services.data import get_dataset

        return get_dataset(engine, name).as_json()

    @route("POST", "/api/v1/datasets/{name}/replicas", "deploy", tags=["data"])
    def replicate(name: Name, body: Replicate) -> ReplicatedOut:
        """Copy a version (the latest unless ``version``) to a site: refused before a byte moves unless the policies
        allow it there, verified end to end, its egress in the ledger; nothing moves when a verified copy is there."""
        from archipel.services.data import replicate_dataset

        ref = f"{name}@v{body.version}" if body.version else name
        return replicate_dataset(workspace, engine, ref, body.to, streams=body.streams).as_json()

    @route("GET", "/api/v1/policy/check", "read", tags=["data"])
    def policy_check(
        data: DataRef,
        site: SiteName,
        action: Literal["store", "process", "replicate", "derive_export", "serve"] = "process",
        origin: Annotated[str | None, Query(pattern=r"^[A-Za-z]{2}(-[A-Za-z0-9]{1,3})?$")] = None,
    ) -> DecisionOut:
        """What the policies say about an action on a dataset at a site, and why (audited as a dry run)."""
        from archipel.services.data import check_policy

        return check_policy(workspace, engine, data, site, action, origin).as_json()

    # -- plans and runs ------------------------------------------------------------------------------------------
    @route("POST", "/api/v1/plans", "read", tags=["plans"])
    def plan(
        spec: Annotated[
            PipelineSpec | JobSpec,
            Body(
                description="A pipeline (with steps) or job spec, as its YAML "
                "would parse (see `archipel schema`)."
            ),
        ],
        objective: Literal["cost", "time"] = "cost",
    ) -> PlanOut:
        """A dry run of the planner: where each step would go, what it would cost, why every other site is out."""
        from archipel.services.plan import make_plan

        pipeline = spec if isinstance(spec, PipelineSpec) else PipelineSpec.of_job(spec)
        return make_plan(workspace, engine, pipeline, objective=objective).as_json()

    @route("GET", "/api/v1/runs", "read", tags=["runs"])
    def runs(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[RunOut]:
        """The newest runs with their state, sites and cost."""
        from archipel.services.runs import list_runs

        return [v.as_json() for v in list_runs(engine, limit=limit)]

    @route("GET", "/api/v1/runs/{run_id}", "read", tags=["runs"])
    def run(run_id: RunId) -> RunOut:
        """One run: steps, attempts, checkpoints, metrics, outputs."""
        from archipel.services.runs import get_run

        return get_run(engine, run_id).as_json()

    @route("GET", "/api/v1/runs/{run_id}/logs", "read", tags=["runs"])
    def run_logs(run_id: RunId, step: Annotated[str | None, Query(pattern=NAME)] = None) -> RunLogsOut:
        """Every attempt's output so far: ``lines`` prefixed with their step and attempt (``train#2 ...``)."""
        from archipel.services.runs import run_logs as logs

        lines = [f"{s}#{a} {line}" for s, a, text in logs(workspace, engine, run_id, step=step)
                 for line in text.splitlines()]  # fmt: skip
        return {"run_id": run_id, "lines": lines}

    @route("GET", "/api/v1/runs/{run_id}/logs/stream", "read", tags=["runs"], response_class=StreamingResponse,
           responses={200: {"description": "One JSON object a line, as the output comes, until the run has ended.",
                            "content": {NDJSON: {"schema": LogLineOut.model_json_schema()}}}})  # fmt: skip
    def run_logs_stream(
        run_id: RunId, step: Annotated[str | None, Query(pattern=NAME)] = None
    ) -> StreamingResponse:
        """Every attempt's output as it comes, as newline-delimited JSON (``{"step", "attempt", "line"}``), until
        the run has ended; 404 at once for an unknown run."""
        from archipel.services.runs import follow_logs, get_run

        get_run(engine, run_id, metrics=False)  # NotFound before the stream starts

        def lines() -> Iterator[bytes]:
            for s, a, text in follow_logs(workspace, engine, run_id, step=step):
                for line in text.splitlines():
                    yield LogLineOut(step=s, attempt=a, line=line).model_dump_json().encode() + b"\n"

        return StreamingResponse(lines(), media_type=NDJSON)

    @route("POST", "/api/v1/runs/{run_id}/cancel", "deploy", tags=["runs"])
    def cancel(run_id: RunId) -> CancelOut:
        """Ask the reconciler to stop the run's jobs."""
        from archipel.services.runs import cancel_run

        return {"run_id": cancel_run(workspace, engine, run_id), "cancel_requested": True}

    # -- models --------------------------------------------------------------------------------------------------
    @route("GET", "/api/v1/models", "read", tags=["models"])
    def models() -> list[ModelOut]:
        """Every model with its versions' count, aliases and latest metrics."""
        from archipel.services.models import list_models

        return [v.as_json() for v in list_models(engine)]

    @route("GET", "/api/v1/models/{name}", "read", tags=["models"])
    def model(name: Name) -> ModelOut:
        """One model: every version with lineage, metrics, aliases and replicas."""
        from archipel.services.models import get_model

        return get_model(engine, name).as_json()

    @route("POST", "/api/v1/models/{name}/promote", "deploy", tags=["models"])
    def promote(name: Name, body: Promote) -> PromotionOut:
        """Move an alias to a version if the alias's gate holds; 409 naming the failing clauses otherwise."""
        from archipel.services.models import promote as do_promote

        return do_promote(workspace, engine, name, body.version, to=body.to).as_json()

    @route("POST", "/api/v1/models/{name}/replicas", "deploy", tags=["models"])
    def replicate_model(name: Name, body: ReplicateModel) -> ModelReplicaOut:
        """Copy a version (``version``, or the one ``alias`` points to) to a site, verified, if its training data's
        policies allow derived models there; 409 with the rule otherwise."""
        from archipel.services.models import replicate_model as do_replicate

        ref = f"{name}/{body.version}" if body.version else f"{name}@{body.alias}" if body.alias else name
        version, moved = do_replicate(workspace, engine, ref, body.to)
        return {"ref": version.ref, "to": body.to, "bytes_moved": moved, "replicas": list(version.replicas)}

    # -- deployments ---------------------------------------------------------------------------------------------
    @route("GET", "/api/v1/deployments", "read", tags=["deployments"])
    def deployments() -> list[DeploymentOut]:
        """Every deployment with its replicas per site."""
        from archipel.services.deployments import list_deployments

        return [v.as_json() for v in list_deployments(engine)]

    @route("GET", "/api/v1/deployments/{name}", "read", tags=["deployments"])
    def deployment(name: Name) -> DeploymentOut:
        """One deployment: version, canary, replicas, their sites and hourly cost."""
        from archipel.services.deployments import get_deployment

        return get_deployment(engine, name).as_json()

    @route("POST", "/api/v1/deployments", "deploy", tags=["deployments"])
    def deploy(spec: DeploymentSpec) -> DeploymentOut:
        """Start or update a deployment (the spec as its YAML would parse): the model copied where its data allows,
        replicas started at the control plane's sites, answered once they are ready (an update rolls without
        failing a request)."""
        from archipel.services.deployments import deploy as do_deploy

        return do_deploy(workspace, engine, spec).as_json()

    @route("POST", "/api/v1/deployments/{name}/rollback", "deploy", tags=["deployments"])
    def rollback(name: Name) -> DeploymentOut:
        """Back to the version served before the last update (no request fails)."""
        from archipel.services.deployments import rollback_deployment

        return rollback_deployment(workspace, engine, name).as_json()

    @route("POST", "/api/v1/deployments/{name}/down", "deploy", tags=["deployments"])
    def down(name: Name) -> DeploymentOut:
        """Stop every replica of the deployment."""
        from archipel.services.deployments import down as do_down

        return do_down(workspace, engine, name).as_json()

    # -- tokens --------------------------------------------------------------------------------------------------
    @route("GET", "/api/v1/tokens", "admin", tags=["tokens"])
    def tokens() -> list[TokenOut]:
        """Every token's id, name, scope, limits and dates (never a secret: only hashes are stored)."""
        from archipel.services.tokens import list_tokens

        return [t.as_json() for t in list_tokens(engine)]

    @route("POST", "/api/v1/tokens", "admin", tags=["tokens"], status_code=201)
    def new_token(body: NewToken) -> NewTokenOut:
        """A new token; the answer holds the whole token, once."""
        from archipel.services.tokens import create_token

        ttl = timedelta(days=body.ttl_days) if body.ttl_days else None
        whole, token = create_token(workspace, engine, scope=body.scope, name=body.name,
                                    deployment=body.deployment, origins=body.origins, ttl=ttl)  # fmt: skip
        return {**token.as_json(), "token": whole}

    @route("DELETE", "/api/v1/tokens/{token_id}", "admin", tags=["tokens"])
    def revoke(token_id: TokenId) -> TokenOut:
        """Revoke a token (gateways stop accepting it within their token cache time)."""
        from archipel.services.tokens import revoke_token

        return revoke_token(workspace, engine, token_id).as_json()

    # -- cost, audit, monitoring ---------------------------------------------------------------------------------
    def spend(by: str, since_hours: float | None, tag: str | None = None) -> JSONObject:
        from archipel.cost.report import report
        from archipel.db import session_scope

        since = datetime.now(UTC) - timedelta(hours=since_hours) if since_hours else None
        with session_scope(engine) as session:
            return report(session, by=by, since=since, tag_key=tag, budgets=workspace.spec.budgets).as_json()

    @route("GET", "/api/v1/cost", "read", tags=["cost"])
    def cost(
        by: Literal["site", "provider", "run", "kind", "day"] = "site", since_hours: Since = None
    ) -> CostReportOut:
        """Spend grouped by site, provider, run, kind or day, and every budget's status."""
        return spend(by, since_hours)

    @route("GET", "/api/v1/cost/tags/{key}", "read", tags=["cost"])
    def cost_by_tag(
        key: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,63}$")], since_hours: Since = None
    ) -> CostReportOut:
        """Spend grouped by the values of one tag (entries without it: ``(untagged)``), and budgets."""
        return spend("tag", since_hours, key)

    @route("GET", "/api/v1/audit", "read", tags=["audit"])
    def audit(
        action: Annotated[str | None, Query(max_length=100)] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 200,
    ) -> list[AuditEntryOut]:
        """The newest audit entries, oldest first; ``action`` matches a prefix (``policy.``)."""
        from archipel.policy.audit import AuditLog

        return [
            e.as_json() for e in AuditLog(engine, workspace.state_dir).entries(action=action, limit=limit)
        ]

    @route("GET", "/api/v1/audit/verify", "read", tags=["audit"])
    def audit_verify() -> AuditVerifyOut:
        """Walk the hash chain from the first entry and check the anchored head."""
        from archipel.policy.audit import AuditLog

        return AuditLog(engine, workspace.state_dir).verify().as_json()

    @route("GET", "/api/v1/monitoring", "read", tags=["monitoring"])
    def monitoring(deployment: Annotated[str | None, Query(max_length=200)] = None) -> list[DriftReportOut]:
        """The latest drift report per deployment and site: per feature test, score, verdict; rows."""
        from archipel.services.monitoring import monitor_status

        return monitor_status(engine, deployment)

    @route("POST", "/api/v1/monitoring/{name}/run", "deploy", tags=["monitoring"])
    def monitor_run(name: Name, body: Annotated[MonitorRun, Body()] = MonitorRun()) -> MonitorRunOut:
        """Check a deployment now: a drift job at each site holding samples (only aggregates come back), the
        service levels from the replicas' counters; an alert fires its triggers (the answer says how far each
        loop went). Waits for the drift jobs."""
        from archipel.services.monitoring import check_slo, run_monitor

        return {"drift": run_monitor(workspace, engine, name, window_s=body.window_s),
                "slo": check_slo(workspace, engine, name)}  # fmt: skip

    @route("GET", "/api/v1/triggers", "read", tags=["monitoring"])
    def triggers() -> list[TriggerOut]:
        """The triggers of ``archipel.yaml``: which alerts of which deployment start which pipeline."""
        from archipel.services.monitoring import list_triggers

        return list_triggers(workspace)

    @route("GET", "/api/v1/alerts", "read", tags=["monitoring"])
    def alerts(
        deployment: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[AlertOut]:
        """The newest alerts (drift, SLO breaches)."""
        from archipel.services.monitoring import list_alerts

        return list_alerts(engine, deployment, limit)

    from archipel.api.dashboard import mount
    from archipel.api.uploads import router as uploads

    app.include_router(uploads)
    mount(app)
    return app
