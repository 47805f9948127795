"""Engines for the metadata store: SQLite by default (WAL, synchronous=FULL, busy timeout), PostgreSQL for teams.

On SQLite every transaction starts with ``BEGIN IMMEDIATE``: writers queue on the busy timeout instead of
failing when a read transaction would have to upgrade to a write (SQLite's deferred default returns
SQLITE_BUSY at once in that case). Transactions are short by contract: no network calls inside them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from archipel.errors import MissingDependency, SpecError

__all__ = ["BUSY_TIMEOUT_MS", "make_engine", "redact_url", "session_scope"]

BUSY_TIMEOUT_MS = 30_000


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with archipel's connection settings; creates a SQLite file's directory."""
    try:
        parsed = make_url(url)
    except Exception:
        raise SpecError(
            f"not a database URL: {redact_url(url)!s}; use sqlite:///PATH or postgresql+psycopg://..."
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, **kwargs)
        _sqlite_pragmas(engine)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() in ("psycopg2", "psycopg2cffi") or parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            return create_engine(parsed, pool_pre_ping=True, **kwargs)
        except ModuleNotFoundError:
            raise MissingDependency(
                "PostgreSQL needs the psycopg driver: pip install 'archipel[postgres]'"
            ) from None
    raise SpecError(f"unsupported metadata store {backend!r}: use SQLite or PostgreSQL")


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session
