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
    "AuditHeadRow",
    "AuditRow",
    "Base",
    "CostEntryRow",
    "DatasetReplicaRow",
    "DatasetRow",
    "DatasetVersionRow",
    "SiteRow",
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
