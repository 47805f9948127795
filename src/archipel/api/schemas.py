"""What the REST API answers: one pydantic model per shape a route returns, for the OpenAPI document.

The routes still return the dicts of the services' ``as_json()`` (the CLI's ``--json`` prints the same dicts);
FastAPI validates each answer against the route's return type and serializes it from the validated model, so
these models are a checked contract, not documentation that can drift:

- every model refuses keys it does not declare (``extra="forbid"``): a key a service adds without saying so here
  fails the answer with a 500, which the API tests see;
- a serialized model equals the dict it was validated from (timestamps keep their ``isoformat()`` text, a key the
  service leaves out stays out), so the API's answers are the CLI's ``--json``, whatever the key order.

Two kinds of field take any JSON: those whose shape depends on what wrote them (an audit entry's or an alert's
``details``), and the few open models below that say why.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
)
from pydantic.json_schema import SkipJsonSchema

from archipel.cost.report import GroupBy
from archipel.executor.states import RunState
from archipel.models.cost import Period
from archipel.models.deployment import DeploymentSpec
from archipel.models.job import PipelineSpec
from archipel.models.policy import Action, Classification
from archipel.models.site import Provider
from archipel.planner.problem import RejectionKind

__all__ = [
    "AlertOut",
    "AuditEntryOut",
    "AuditVerifyOut",
    "CancelOut",
    "CheckpointCopyOut",
    "CheckpointOut",
    "CostReportOut",
    "DatasetAddOut",
    "DatasetOut",
    "DecisionOut",
    "DeploymentOut",
    "DriftCheckOut",
    "DriftReportOut",
    "HealthOut",
    "LogLineOut",
    "LoopOutcomeOut",
    "ModelOut",
    "ModelReplicaOut",
    "MonitorRunOut",
    "NewTokenOut",
    "OfferOut",
    "PlanOut",
    "PromotionOut",
    "ReplicatedOut",
    "RunLogsOut",
    "RunOut",
    "SiteCheckOut",
    "SiteOut",
    "SloOut",
    "TokenOut",
    "TriggerOut",
]

Timestamp = Annotated[
    AwareDatetime,
    PlainSerializer(datetime.isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A UTC time as the services write it (``datetime.isoformat()``: ``2026-01-31T12:00:00.123456+00:00``)."""
Scope = Literal["read", "infer", "deploy", "admin"]
"""The token ladder of :data:`archipel.services.tokens.SCOPES`."""
Health = Literal["healthy", "degraded", "unreachable"]


class Out(BaseModel):
    """The base of every answer: unknown keys refused, attribute docstrings become the document's descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class HealthOut(Out):
    status: Literal["ok"]
    version: str
    """archipel's version."""


# -- sites -----------------------------------------------------------------------------------------------------


class CapacityOut(Out):
    cpus: float
    memory: str
    """A size: ``16GiB``, or ``NB`` in bytes when not a whole number of GiB."""
    accelerators: dict[str, int]
    """Accelerator name → count."""


class SiteOut(Out):
    """A site of ``archipel.yaml`` with its last known health."""

    name: str
    provider: Provider
    region: str
    jurisdiction: str
    storage: str
    """Storage URL (``file://``, ``s3://``, ...); credentials are never part of it."""
    compute: str
    """Compute backend: ``local`` or ``ray+http://HOST:8265``."""
    capacity: CapacityOut
    labels: dict[str, str]
    enabled: bool
    health: Health | Literal["unknown"]
    """From the last ``sites check``; ``unknown`` before the first, or after a chaos heal."""
    checked_at: Timestamp | None
    applied: bool
    """Whether the metadata store holds the site as ``archipel.yaml`` describes it (``archipel apply``)."""


class ProbeOut(Out):
    ok: bool
    seconds: float
    detail: str


class SiteCheckOut(Out):
    """One site checked for real: a probe object written, listed, read and deleted; a process run."""

    site: str
    health: Health
    """healthy: both probes passed; degraded: one did; unreachable: neither."""
    storage: ProbeOut
    compute: ProbeOut
    checked_at: Timestamp


class OfferOut(Out):
    """A machine a site can run, with its hourly price."""

    site: str
    provider: Provider
    region: str
    jurisdiction: str
    instance_type: str
    vcpus: float
    memory_gib: float
    accelerator: str | None
    accelerator_count: int
    spot: bool
    hourly_usd: float
    source: str
    """Where the price comes from (a catalog snapshot, or archipel.yaml's amortized pricing)."""
    as_of: str
    """When the price was read, as the catalog gives it (usually YYYY-MM-DD)."""


# -- data and policies -----------------------------------------------------------------------------------------


class ColumnOut(Out):
    name: str
    type: str
    """The Arrow type (``int64``, ``double``, ``string``, ...)."""
    nullable: bool


class DatasetReplicaOut(Out):
    sealed_key_id: str | None
    """The id of the site's data key when the copy is sealed (encrypted at rest); null when stored in plaintext."""


class DatasetVersionOut(Out):
    ref: str
    """``NAME@vN``."""
    version: int
    sha256: str
    bytes: int
    rows: int
    columns: list[ColumnOut]
    key: str
    """The object's key in each site's storage (content-addressed)."""
    source: str
    """What was ingested (a file path or URL)."""
    created_at: Timestamp
    erased_at: Timestamp | None
    replicas: dict[str, DatasetReplicaOut]
    """Site → its copy."""


class DatasetAddOut(DatasetVersionOut):
    created: bool
    """False when the file was the latest version already: nothing was stored."""


class DatasetOut(Out):
    name: str
    classification: Classification
    jurisdiction: str
    """Where the data comes from: the jurisdiction its residency rules refer to."""
    home_site: str
    description: str
    created_at: Timestamp
    latest: str | None
    """The newest version not erased (``NAME@vN``); null when every version is erased."""
    versions: list[DatasetVersionOut]


class ReplicatedOut(Out):
    ref: str
    """The dataset version copied: NAME@vN."""
    source: str
    dest: str
    bytes_moved: int
    """0 when the destination held a verified copy already."""
    already_present: bool
    egress_usd: float
    egress_per_gb: float
    sealed: bool
    """Whether the copy is encrypted with the destination site's key (the policy asked for it)."""
    seconds: float
    rule: str | None
    """The policy rule that allowed the copy."""
    reason: str


class DecisionOut(Out):
    """The policy engine's decision on one action on some data at one site, and why."""

    allowed: bool
    action: Action
    subject: str
    site: str
    origin: str | None
    """The requester's jurisdiction (``serve`` only)."""
    rule: str
    """The rule that decided."""
    reason: str
    encrypt: bool
    """The data must be stored sealed at the site (the rule asks for encryption at rest)."""


# -- plans -----------------------------------------------------------------------------------------------------


class PinOut(Out):
    ref: str
    sha256: str
    bytes: int
    replicas: list[str]
    """Sites holding a copy when the plan was made."""


class InputMoveOut(Out):
    """An input the site lacks, brought from its cheapest replica."""

    input: str
    ref: str
    from_: str = Field(alias="from")
    """The site it comes from."""
    bytes: int
    usd_per_gb: float
    usd: float


class OptionOut(Out):
    """A feasible placement of a step and every term of its cost."""

    site: str
    offer: str
    spot: bool
    nodes: int
    hourly_usd: float
    """All nodes together."""
    hours: float
    """Expected run time before rework."""
    compute_usd: float
    risk_usd: float
    """Expected cost of the work spot preemptions redo."""
    egress_usd: float
    """Bringing the inputs the site lacks."""
    total_usd: float
    total_hours: float
    """Run time, rework and input transfer."""
    moves: list[InputMoveOut]


class AlternativeOut(OptionOut):
    step_egress_usd: float
    """Moving the parent steps' outputs to this site."""
    delta_usd: float
    """What choosing it instead would add to the plan."""


class RejectionOut(Out):
    """Why a site cannot take a step."""

    site: str
    kind: RejectionKind
    rule: str | None
    """The policy rule (kind ``policy``) or budget (kind ``budget``) that decided."""
    detail: str
    would_cost_usd: float | SkipJsonSchema[None] = None
    """What the site's best offer would have cost (compute and input egress): the price of the rule. Present only
    when the site has an offer."""

    # The service leaves the key out when there is no figure: keep it out rather than answer null. No return
    # annotation on purpose: pydantic would take it as the serialized schema and document "any object".
    @model_serializer(mode="wrap")
    def _without_unknown_cost(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        out = handler(self)
        if self.would_cost_usd is None:
            out.pop("would_cost_usd", None)
        return out


class PlacementOut(Out):
    step: str
    chosen: OptionOut
    alternatives: list[AlternativeOut]
    """The next best options (up to 10), best first."""
    rejections: list[RejectionOut]


class BreakdownOut(Out):
    """The plan's total by kind of cost."""

    compute_usd: float
    risk_usd: float
    input_egress_usd: float
    step_egress_usd: float


class PlanBudgetOut(Out):
    name: str
    remaining_usd: float
    """What is left of the tightest hard budget whose tags the pipeline carries."""


class StepEgressOut(Out):
    """A step's outputs sent to a step placed at another site."""

    from_: str = Field(alias="from")
    """The step that makes them."""
    to: str
    """The step that reads them."""
    from_site: str
    to_site: str
    bytes: int
    usd: float


class PlanOut(Out):
    """A dry run of the planner: where each step would go, what it would cost, and why every other site is out."""

    name: str
    spec: PipelineSpec
    """The spec planned, as a pipeline (a job is a pipeline of one step), defaults filled in."""
    fingerprint: str
    """sha256 over everything the plan depends on (prices, data, policies, health, budgets, the spec)."""
    pins: dict[str, PinOut]
    """Input ref → the version the plan was made for."""
    objective: Literal["cost", "time"]
    solver: Literal["milp", "greedy", "brute"]
    total_usd: float
    breakdown: BreakdownOut
    budget: PlanBudgetOut | None
    steps: list[PlacementOut]
    step_egress: list[StepEgressOut]
    solve_seconds: float


# -- runs ------------------------------------------------------------------------------------------------------


class CheckpointCopyOut(Out):
    key: str
    sha256: str
    size: int
    seq: int
    step: int | None
    """The training step it was saved at, when the code said."""
    sites: list[str]
    """Sites holding a verified copy."""


class CheckpointOut(CheckpointCopyOut):
    previous: CheckpointCopyOut | None = None
    """The newest earlier checkpoint held beyond this one's site: what a recovery resumes from if this one's only
    site dies before a copy of it leaves."""


class StepOutputOut(Out):
    key: str
    sha256: str
    size: int
    kind: Literal["dataset", "artifact"]
    site: str
    """The site that holds it."""


class RunStepOut(Out):
    id: int
    run_id: str
    step: str
    state: RunState
    site: str | None
    offer: str | None
    spot: bool
    hourly_usd: float
    failures: int
    """Attempts that exited non-zero (counted against ``retries``)."""
    recoveries: int
    """Attempts lost to a dead worker or site (not counted against ``retries``)."""
    not_before: Timestamp | None
    """Retry backoff: the next attempt starts no earlier."""
    cache_key: str | None
    cached_from: str | None
    """The run whose outputs this step reused."""
    checkpoint: CheckpointOut | None
    """The latest checkpoint."""
    outputs: dict[str, StepOutputOut]
    message: str


class RunAttemptOut(Out):
    """One launch of a step at a site."""

    id: int
    run_id: str
    step: str
    number: int
    site: str
    offer: str
    spot: bool
    hourly_usd: float
    job_id: str | None
    state: Literal["RUNNING", "SUCCEEDED", "FAILED", "LOST", "CANCELLED"]
    """LOST: the worker or its site died (the step recovers elsewhere)."""
    exit_code: int | None
    exit_reason: str
    started_at: Timestamp
    ended_at: Timestamp | None
    heartbeat_at: Timestamp | None
    events_offset: int
    """How far the worker's event file has been read."""
    cost_usd: float


class RunMetricOut(Out):
    """A metric, parameter or artifact the run's code logged."""

    step: str
    attempt: int
    kind: Literal["metric", "param", "artifact"]
    key: str
    value: float | None
    """A metric's value."""
    text: str | None
    """A parameter's value or an artifact's storage key."""
    at_step: int | None
    at: Timestamp


class RunOut(Out):
    id: str
    name: str
    state: RunState
    created_at: Timestamp
    ended_at: Timestamp | None
    tags: dict[str, str]
    steps: list[RunStepOut]
    attempts: list[RunAttemptOut]
    metrics: list[RunMetricOut]
    """Empty in the list of runs; every logged value in one run."""
    planned_usd: float
    cost_usd: float
    """What its attempts cost so far."""


class RunLogsOut(Out):
    run_id: str
    lines: list[str]
    """Each line prefixed with its step and attempt: ``train#2 ...``."""


class LogLineOut(Out):
    """One line of a run's output, in ``/runs/{run_id}/logs/stream``."""

    step: str
    attempt: int
    line: str


class CancelOut(Out):
    run_id: str
    cancel_requested: Literal[True]


# -- models ----------------------------------------------------------------------------------------------------


class TensorOut(Out):
    name: str
    datatype: str
    """Open Inference Protocol datatype (FP32, INT64, BYTES, ...)."""
    shape: list[int | None]
    """null for a dynamic dimension."""


class SignatureOut(Out):
    """The ONNX model's inputs and outputs."""

    # open: the converter adds keys of its own per flavor (a scikit-learn classifier's task and classes, ...)
    model_config = ConfigDict(extra="allow")

    inputs: list[TensorOut]
    outputs: list[TensorOut]
    feature_names: list[str] | None


class LineageDatasetOut(Out):
    ref: str
    sha256: str
    classification: Classification
    jurisdiction: str


class LineageOut(Out):
    """Where a version comes from: its training data and the site it was registered at."""

    # open: the rest depends on what registered it (a run adds run_id, step, attempt and code_revision; an MLflow
    # import, mlflow and estimator; a caller of the registry, keys of its own)
    model_config = ConfigDict(extra="allow")

    datasets: list[LineageDatasetOut]
    site: str


class ModelVersionOut(Out):
    model: str
    version: int
    ref: str
    """``NAME/N``."""
    sha256: str
    bytes: int
    key: str
    """The ONNX file's key in each site's storage (content-addressed)."""
    flavor: str
    """What it was converted from: sklearn, torch, onnx, mlflow-..."""
    signature: SignatureOut
    metrics: dict[str, float]
    params: dict[str, str]
    lineage: LineageOut
    classification: Classification
    """The most restrictive of its training data's (a model inherits their residency)."""
    jurisdiction: str
    home_site: str
    status: Literal["active", "archived"]
    description: str
    tags: dict[str, str]
    created_at: Timestamp
    replicas: list[str]
    """Sites holding a copy."""
    aliases: list[str]
    """Aliases pointing at this version."""


class ModelOut(Out):
    name: str
    description: str
    tags: dict[str, str]
    created_at: Timestamp
    aliases: dict[str, int]
    """Alias → version."""
    versions: list[ModelVersionOut]


class ClauseOut(Out):
    clause: str
    passed: bool
    value: float | None
    """The candidate's metric (null when it has none)."""
    threshold: float | None
    """What it was compared with (null when the alias compared with points to nothing yet)."""
    detail: str


class PromotionOut(Out):
    """An alias moved to a version whose gate held (a failing gate is a 409)."""

    model: str
    version: int
    alias: str
    passed: bool
    clauses: list[ClauseOut]
    previous: int | None
    """The version the alias pointed to before."""


# -- deployments -----------------------------------------------------------------------------------------------


class ReplicaOut(Out):
    id: int
    site: str
    jurisdiction: str
    version: int
    url: str
    """Where the replica listens (loopback at its site; gateways forward to it)."""
    job_id: str
    hourly_usd: float


class DeploymentOut(Out):
    name: str
    model: str
    version: int
    state: Literal["ready", "down"]
    spec: DeploymentSpec
    """The spec it was deployed with, defaults filled in."""
    replicas: list[ReplicaOut]
    """The running replicas."""
    previous_version: int | None
    """The version a rollback returns to."""
    updated_at: Timestamp


# -- tokens ----------------------------------------------------------------------------------------------------


class TokenOut(Out):
    """A token as stored: never its secret (only a hash of it is kept)."""

    id: str
    name: str
    scope: Scope
    deployment: str | None
    """The one deployment it may call, if limited."""
    origins: list[str]
    """Jurisdictions its bearer may assert as a request's origin."""
    created_at: Timestamp
    expires_at: Timestamp | None
    revoked_at: Timestamp | None


class NewTokenOut(TokenOut):
    token: str
    """The whole token (``arch_<id>_<secret>``): shown this once."""


# -- cost and audit --------------------------------------------------------------------------------------------


class CostRowOut(Out):
    """One group's spend in USD, split by kind of cost."""

    key: str
    """The group: a site, provider, run (``(no run)``), kind, UTC day or tag value (``(untagged)``)."""
    compute_usd: float
    egress_usd: float
    other_usd: float
    """Serving, storage and every other kind."""
    total_usd: float
    entries: int
    """Ledger entries in the group."""


class CostTotalOut(Out):
    compute_usd: float
    egress_usd: float
    other_usd: float
    total_usd: float
    entries: int


class BudgetOut(Out):
    """A budget in its current period (whatever ``since``)."""

    name: str
    limit_usd: float
    period: Period
    spent_usd: float
    remaining_usd: float
    exceeded: bool
    percent_used: float


class CostReportOut(Out):
    by: GroupBy
    tag_key: str | None
    """The tag grouped on (``by`` = tag)."""
    since: Timestamp | None
    rows: list[CostRowOut]
    """Largest total first."""
    total: CostTotalOut
    budgets: list[BudgetOut]


class AuditEntryOut(Out):
    """One entry of the hash-chained audit log."""

    seq: int
    at: Timestamp
    actor: str
    action: str
    """``policy.process``, ``run.submit``, ``model.promote``, ..."""
    subject: str
    sites: list[str]
    outcome: str
    """allowed, refused, done or failed (a drift check: its verdict)."""
    rule: str | None
    reason: str
    details: dict[str, Any]
    """What the action recorded (its shape depends on the action)."""
    hash: str


class AuditVerifyOut(Out):
    ok: bool
    entries: int
    """Entries checked."""
    head_seq: int
    bad_seq: int | None
    """The first entry that fails (null when ok, or when the anchor itself is the problem)."""
    problem: str


# -- monitoring ------------------------------------------------------------------------------------------------


class FeatureDriftOut(Out):
    """One feature's (or prediction's) verdict. ``score`` is a p-value (ks, chisquare, z: drifted below the
    threshold) or a distance (wasserstein, jensenshannon, psi: drifted at or above it)."""

    feature: str
    kind: Literal["numeric", "categorical"]
    test: str
    """The test used; ``missing`` when only one side has values, ``none`` when there is nothing to test."""
    score: float | None
    threshold: float | None
    drifted: bool
    statistic: float | None
    psi: float | None
    reference_rows: int
    current_rows: int
    reference_missing_share: float
    current_missing_share: float
    missing_drifted: bool
    note: str | None


class HistogramOut(Out):
    """A numeric feature's histogram over the reference's deciles; every bin holds at least
    ``min_count_per_bin`` rows or is merged."""

    edges: list[float]
    reference: list[int]
    current: list[int]


class TypeChangeOut(Out):
    feature: str
    reference: str
    current: str
    breaking: bool
    """Numbers became text or the reverse."""


class SchemaSkewOut(Out):
    """The training schema against the serving one."""

    missing: list[str]
    extra: list[str]
    type_changes: list[TypeChangeOut]
    order_changed: bool
    ok: bool


class DriftReportOut(Out):
    """The latest drift check of a deployment at one site: aggregates only (the samples stay at the site)."""

    id: int
    deployment: str
    site: str
    model: str
    version: int
    since: Timestamp
    until: Timestamp
    rows: int
    """Requests sampled in the window."""
    verdict: Literal["ok", "drift", "too-few-rows", "failed", "withheld"]
    share_drifted: float | None
    drifted: list[str]
    """The features that drifted."""
    features: list[FeatureDriftOut]
    predictions: list[FeatureDriftOut]
    histograms: dict[str, HistogramOut]
    """Numeric feature → histograms."""
    min_count_per_bin: int | None
    note: str | None
    """Why there is no verdict (too few rows, the job failed)."""
    schema_: SchemaSkewOut | None = Field(alias="schema")
    created_at: Timestamp


class LoopOutcomeOut(Out):
    trigger: str
    stage: str
    """skipped, planned, ran, registered, promoted, rolled-out, or failed-at-<stage>."""
    reason: str
    run_id: str | None
    version: int | None


class DriftCheckOut(DriftReportOut):
    loop: list[LoopOutcomeOut] = []
    """What the triggers did with the alert a drift raised (absent without one)."""


class SloOut(Out):
    site: str
    answers: int
    """Answers the site's replicas counted since they started."""
    error_rate: float
    p99_ms: float | None
    """The upper bound of the latency bucket holding the 99th percentile."""


class MonitorRunOut(Out):
    drift: list[DriftCheckOut]
    slo: list[SloOut]


class TriggerOut(Out):
    name: str
    deployment: str
    on: list[Literal["drift", "slo"]]
    pipeline: str
    promote_to: str
    rollout: bool
    cooldown_s: float


class ModelReplicaOut(Out):
    ref: str
    to: str
    bytes_moved: int
    """0 when the site held a verified copy already."""
    replicas: list[str]


class AlertOut(Out):
    id: int
    kind: Literal["drift", "slo"]
    deployment: str
    site: str | None
    reason: str
    details: dict[str, Any]
    """A drift alert: its report's id; an SLO alert: the figures (answers, error rate, p99)."""
    created_at: Timestamp
