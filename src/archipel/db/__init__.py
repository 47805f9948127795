"""The metadata store: engine, rows, migrations."""

from __future__ import annotations

from archipel.db.engine import make_engine, redact_url, session_scope
from archipel.db.migrate import current_revision, head_revision, migrate, connect

__all__ = ["current_revision", "head_revision", "make_engine", "migrate", "connect", "redact_url", "session_scope"]
