"""SQLAlchemy rows of the metadata store. Services convert between these and the domain models.

Every table change comes with an Alembic migration in ``db/migrations/versions``; a test checks that
``upgrade head`` on an empty database equals this metadata.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, Float, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from archipel.db.types import UTCDateTime, utcnow

__all__ = ["Base", "SiteRow", "WorkspaceStateRow"]

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
