"""datasets, replicas, audit log, cost ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import archipel.db.types

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", archipel.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=63), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"], unique=False)
    op.create_table(
        "cost_ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", archipel.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("site", sa.String(length=63), nullable=False),
        sa.Column("dest_site", sa.String(length=63), nullable=True),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("amount_usd", sa.Float(), nullable=False),
        sa.Column("quantity", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("unit_price_usd", sa.Float(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("transfer_id", sa.String(length=64), nullable=True),
        sa.Column("deployment_id", sa.String(length=64), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cost_ledger")),
    )
    op.create_index(op.f("ix_cost_ledger_at"), "cost_ledger", ["at"], unique=False)
    op.create_index(op.f("ix_cost_ledger_kind"), "cost_ledger", ["kind"], unique=False)
    op.create_index(op.f("ix_cost_ledger_run_id"), "cost_ledger", ["run_id"], unique=False)
    op.create_index(op.f("ix_cost_ledger_site"), "cost_ledger", ["site"], unique=False)
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("classification", sa.String(length=16), nullable=False),
        sa.Column("jurisdiction", sa.String(length=16), nullable=False),
        sa.Column("home_site", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_at", archipel.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_datasets")),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", archipel.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("erased_at", archipel.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset"],
            ["datasets.name"],
            name=op.f("fk_dataset_versions_dataset_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_versions")),
        sa.UniqueConstraint("dataset", "version", name=op.f("uq_dataset_versions_dataset")),
    )
    op.create_index(op.f("ix_dataset_versions_dataset"), "dataset_versions", ["dataset"], unique=False)
    op.create_index(op.f("ix_dataset_versions_sha256"), "dataset_versions", ["sha256"], unique=False)
    op.create_table(
        "dataset_replicas",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=63), nullable=False),
        sa.Column("sealed_key_id", sa.String(length=32), nullable=True),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("verified_at", archipel.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_versions.id"],
            name=op.f("fk_dataset_replicas_version_id_dataset_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_replicas")),
        sa.UniqueConstraint("version_id", "site", name=op.f("uq_dataset_replicas_version_id")),
    )
    op.create_index(op.f("ix_dataset_replicas_site"), "dataset_replicas", ["site"], unique=False)
    op.create_index(op.f("ix_dataset_replicas_version_id"), "dataset_replicas", ["version_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_dataset_replicas_version_id"), table_name="dataset_replicas")
    op.drop_index(op.f("ix_dataset_replicas_site"), table_name="dataset_replicas")
    op.drop_table("dataset_replicas")
    op.drop_index(op.f("ix_dataset_versions_sha256"), table_name="dataset_versions")
    op.drop_index(op.f("ix_dataset_versions_dataset"), table_name="dataset_versions")
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
    op.drop_index(op.f("ix_cost_ledger_site"), table_name="cost_ledger")
    op.drop_index(op.f("ix_cost_ledger_run_id"), table_name="cost_ledger")
    op.drop_index(op.f("ix_cost_ledger_kind"), table_name="cost_ledger")
    op.drop_index(op.f("ix_cost_ledger_at"), table_name="cost_ledger")
    op.drop_table("cost_ledger")
    op.drop_index(op.f("ix_audit_log_action"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("audit_head")
