"""SQLAlchemy rows of the metadata store. Services convert between these and the domain models.

Every table change comes with an Alembic migration in ``db/migrations/versions``; a test checks that
``upgrade head`` on an empty database equals this metadata.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from archipel.db.types import UTCDateTime, utcnow

__all__ = [
    "AlertRow",
    "AuditHeadRow",
    "AuditRow",
    "Base",
    "CostEntryRow",
    "DatasetReplicaRow",
    "DatasetRow",
    "DatasetVersionRow",
    "DeploymentRow",
    "DriftReportRow",
    "LeaseRow",
    "ModelAliasEventRow",
    "ModelAliasRow",
    "ModelReplicaRow",
    "ModelRow",
    "ModelVersionRow",
    "ReplicaRow",
    "RunAttemptRow",
    "RunMetricRow",
    "RunRow",
    "RunStepRow",
    "SiteRow",
    "TokenRow",
    "WorkspaceStateRow",
]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar = {datetime: UTCDateTime, dict[str, Any]: JSON}


class SiteRow(Base):
    """A site as last applied from ``archipel.yaml``, with its last health check."""

    __tablename__ = "sites"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    region: Mapped[str] = mapped_column(String(64))
    jurisdiction: Mapped[str] = mapped_column(String(16), index=True)
    storage_url: Mapped[str] = mapped_column(Text)
    compute_uri: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    health: Mapped[str] = mapped_column(String(16), default="unknown")
    health_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    storage_latency_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    checked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WorkspaceStateRow(Base):
    """Small facts about the workspace (name, last applied spec hash), keyed by name."""

    __tablename__ = "workspace_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DatasetRow(Base):
    """A named dataset: its classification and origin jurisdiction govern every copy and every model from it."""

    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    classification: Mapped[str] = mapped_column(String(16))
    jurisdiction: Mapped[str] = mapped_column(String(16))
    home_site: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetVersionRow(Base):
    """``name@vN``: one immutable Parquet object, identified by its sha256."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(BigInteger)
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(Text, default="")
    key: Mapped[str] = mapped_column(Text)
    """Storage key of the Parquet object, the same at every site."""
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(nullable=True)


class DatasetReplicaRow(Base):
    """A verified copy of a dataset version at a site (the home site's copy included)."""

    __tablename__ = "dataset_replicas"
    __table_args__ = (UniqueConstraint("version_id", "site"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True)
    site: Mapped[str] = mapped_column(String(63), index=True)
    sealed_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """Key id when the copy is stored sealed (encrypted at rest); None when plaintext."""
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    verified_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditRow(Base):
    """One entry of the hash-chained audit log; ``hash`` covers every other column and ``prev_hash``."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(Text)
    sites: Mapped[list[str]] = mapped_column(JSON)
    outcome: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str | None] = mapped_column(String(63), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The chain's head (one row, id 1): appends lock it, so entries get dense sequence numbers."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class CostEntryRow(Base):
    """One line of the cost ledger: what was spent, where, on what, and what caused it."""

    __tablename__ = "cost_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    """egress, compute, serving or storage."""
    site: Mapped[str] = mapped_column(String(63), index=True)
    """Where the money is spent (for egress: the sending site)."""
    dest_site: Mapped[str | None] = mapped_column(String(63), nullable=True)
    provider: Mapped[str] = mapped_column(String(16))
    amount_usd: Mapped[float] = mapped_column(Float)
    quantity: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16))
    unit_price_usd: Mapped[float] = mapped_column(Float)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    transfer_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deployment_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")


class RunRow(Base):
    """A run of a job or pipeline: the spec and plan it was started with, and where it is in its life."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The pipeline spec (a job is a one-step pipeline)."""
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The plan it was started with (:meth:`PlanResult.as_json`)."""
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    workdir: Mapped[str] = mapped_column(Text)
    """Absolute folder the steps' ``workdir`` is relative to (where the spec file lives)."""
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)


class RunStepRow(Base):
    """One step of a run: its state, where it runs now, its latest checkpoint and its outputs."""

    __tablename__ = "run_steps"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    site: Mapped[str | None] = mapped_column(String(63), nullable=True)
    offer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    spot: Mapped[bool] = mapped_column(Boolean, default=False)
    hourly_usd: Mapped[float] = mapped_column(Float, default=0.0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    """Attempts that ended with a non-zero exit (user errors), counted against ``retries``."""
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    """Attempts lost to a dead worker or site (not the job's fault), not counted against ``retries``."""
    not_before: Mapped[datetime | None] = mapped_column(nullable=True)
    """Retry backoff: the next attempt starts no earlier."""
    cache_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    cached_from: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The run whose outputs this step reused."""
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The latest checkpoint: key, sha256, size, seq, step, and the sites holding a verified copy."""
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Output name -> key, sha256, size, kind and the site that holds it."""
    message: Mapped[str] = mapped_column(Text, default="")


class RunAttemptRow(Base):
    """One launch of a step at a site: its compute job, heartbeats, how it ended and what it cost."""

    __tablename__ = "run_attempts"
    __table_args__ = (UniqueConstraint("run_id", "step", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(63))
    number: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(String(63))
    offer: Mapped[str] = mapped_column(String(64))
    spot: Mapped[bool] = mapped_column(Boolean, default=False)
    hourly_usd: Mapped[float] = mapped_column(Float)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    exit_reason: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    """How far the worker's event file has been read."""
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)


class RunMetricRow(Base):
    """A metric, parameter or artifact a run's code logged."""

    __tablename__ = "run_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(63))
    attempt: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    """metric, param or artifact."""
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    """A parameter's value or an artifact's storage key."""
    at_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class LeaseRow(Base):
    """A named lease (``reconciler``): the holder acts until ``expires_at`` unless it renews."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column()


class ModelRow(Base):
    """A registered model: versions are numbered 1, 2, ... densely under this row's lock."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersionRow(Base):
    """``name/N``: one immutable ONNX artifact, its signature, metrics, lineage and card."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(ForeignKey("models.name", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(Text)
    """Storage key of the ONNX file, the same at every site."""
    flavor: Mapped[str] = mapped_column(String(32))
    """What it was converted from: sklearn, torch, onnx, mlflow-sklearn, mlflow-onnx."""
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """datasets (ref, sha256, classification, jurisdiction), run id, step, code revision, training site."""
    card: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Permutation importance on the evaluation set, the training data's profile, the conversion check."""
    classification: Mapped[str] = mapped_column(String(16))
    """The most restrictive classification of its training data: the model inherits its residency."""
    jurisdiction: Mapped[str] = mapped_column(String(16))
    home_site: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16), default="active")
    """active or archived."""
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelReplicaRow(Base):
    """A verified copy of a model version at a site."""

    __tablename__ = "model_replicas"
    __table_args__ = (UniqueConstraint("version_id", "site"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    site: Mapped[str] = mapped_column(String(63))
    verified_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAliasRow(Base):
    """``name@alias`` -> a version."""

    __tablename__ = "model_aliases"

    model: Mapped[str] = mapped_column(ForeignKey("models.name", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAliasEventRow(Base):
    """The history of an alias: every move, with the version before, so rollback knows where to go."""

    __tablename__ = "model_alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(63), index=True)
    alias: Mapped[str] = mapped_column(String(63))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class TokenRow(Base):
    """A bearer token: only the sha256 of its secret is stored; the secret is shown once, at creation."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))
    """read < infer < deploy < admin."""
    deployment: Mapped[str | None] = mapped_column(String(63), nullable=True)
    """Limits the token to one deployment (None: all)."""
    origins: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Jurisdictions the bearer may assert with X-Archipel-Origin (empty: none may be asserted)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class DeploymentRow(Base):
    """A deployment: its spec and the model version it pinned."""

    __tablename__ = "deployments"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    """ready, degraded, down."""
    previous_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReplicaRow(Base):
    """One model server of a deployment, at a site: where gateways send its traffic."""

    __tablename__ = "replicas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(ForeignKey("deployments.name", ondelete="CASCADE"), index=True)
    site: Mapped[str] = mapped_column(String(63))
    jurisdiction: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    job_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    """running or stopped."""
    hourly_usd: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(nullable=True)


class DriftReportRow(Base):
    """One drift check of a deployment at one site: aggregates only (scores, verdicts, histograms with at least
    ``min_count_per_bin`` rows a bin); the samples it read stay at the site."""

    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(63), index=True)
    site: Mapped[str] = mapped_column(String(63))
    model: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    since: Mapped[datetime] = mapped_column()
    until: Mapped[datetime] = mapped_column()
    rows: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(16))
    """drift, ok, too-few-rows, failed, or withheld (the policy keeps the report at its site)."""
    share_drifted: Mapped[float | None] = mapped_column(Float, nullable=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AlertRow(Base):
    """A drift verdict or a service-level breach, and what it started."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    """drift or slo."""
    deployment: Mapped[str] = mapped_column(String(63), index=True)
    site: Mapped[str | None] = mapped_column(String(63), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
