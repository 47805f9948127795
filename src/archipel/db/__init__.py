"""The metadata store: engine, rows, migrations."""

from __future__ import annotations

from archipel.db.engine import make_engine, redact_url, session_scope
from archipel.db.migrate import connect, current_revision, downgrade, head_revision, migrate

__all__ = [
    "connect",
    "current_revision",
    "downgrade",
    "head_revision",
    "make_engine",
    "migrate",
    "redact_url",
    "session_scope",
]
