"""sites and workspace state

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import archipel.db.types

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("jurisdiction", sa.String(length=16), nullable=False),
        sa.Column("storage_url", sa.Text(), nullable=False),
        sa.Column("compute_uri", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("health", sa.String(length=16), nullable=False),
        sa.Column("health_detail", sa.JSON(), nullable=True),
        sa.Column("storage_latency_s", sa.Float(), nullable=True),
        sa.Column("checked_at", archipel.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", archipel.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", archipel.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sites")),
    )
    op.create_index(op.f("ix_sites_jurisdiction"), "sites", ["jurisdiction"], unique=False)
    op.create_table(
        "workspace_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", archipel.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_workspace_state")),
    )


def downgrade() -> None:
    op.drop_table("workspace_state")
    op.drop_index(op.f("ix_sites_jurisdiction"), table_name="sites")
    op.drop_table("sites")
