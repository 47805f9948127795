"""Alembic environment: runs on the connection archipel hands over in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from archipel.db.orm import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - archipel always passes a connection
    raise RuntimeError("archipel migrations run through archipel.db.migrate(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
