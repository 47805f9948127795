"""The metadata store on SQLite and PostgreSQL: migrations equal the models, rows round-trip, writers queue."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from archipel.db import (
    connect,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    migrate,
    redact_url,
    session_scope,
)
from archipel.db.orm import Base, SiteRow, WorkspaceStateRow
from archipel.errors import SpecError


def test_upgrade_head_on_empty_db_equals_models(db_url: str) -> None:
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert set(inspect(engine).get_table_names()) >= {"sites", "workspace_state", "alembic_version"}
    migrate(engine)  # idempotent
    engine.dispose()


def test_downgrade_to_base_and_back(db_url: str) -> None:
    engine = connect(db_url)
    downgrade(engine, "base")
    assert "sites" not in inspect(engine).get_table_names()
    migrate(engine)
    assert "sites" in inspect(engine).get_table_names()
    engine.dispose()


def _site(name: str, **kw: object) -> SiteRow:
    now = datetime.now(UTC)
    values: dict[str, object] = dict(
        name=name,
        provider="aws",
        region="us-east-1",
        jurisdiction="US",
        storage_url="file://x",
        compute_uri="local",
        enabled=True,
        spec={"provider": "aws", "labels": {"tier": "cloud"}, "capacity": {"cpus": 4.0}},
        spec_hash="0" * 64,
        health="unknown",
        created_at=now,
        updated_at=now,
    )
    values.update(kw)
    return SiteRow(**values)


def test_rows_round_trip_json_and_utc(db_url: str) -> None:
    engine = connect(db_url)
    checked = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(microseconds=123)
    with session_scope(engine) as session:
        session.add(_site("a", checked_at=checked, health_detail={"storage": {"ok": True}}))
        session.add(WorkspaceStateRow(key="applied", value={"n": [1, 2]}, updated_at=checked))
    with session_scope(engine) as session:
        row = session.get(SiteRow, "a")
        assert row is not None
        assert row.checked_at == checked and row.checked_at.tzinfo is not None
        assert row.spec["labels"] == {"tier": "cloud"}
        assert row.health_detail == {"storage": {"ok": True}}
        assert session.get(WorkspaceStateRow, "applied").value == {"n": [1, 2]}  # type: ignore[union-attr]
    engine.dispose()


def test_naive_datetimes_are_refused(db_url: str) -> None:
    engine = connect(db_url)
    with pytest.raises(Exception, match="naive datetime"), session_scope(engine) as session:
        session.add(_site("b", checked_at=datetime(2026, 1, 1)))
    engine.dispose()


def test_failed_transaction_leaves_nothing(db_url: str) -> None:
    engine = connect(db_url)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        session.add(_site("c"))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(engine) as session:
        assert session.get(SiteRow, "c") is None
    engine.dispose()


def test_concurrent_writers_queue_instead_of_failing(db_url: str) -> None:
    """16 threads each read-modify-write one counter row: no lost update, no 'database is locked'."""
    engine = connect(db_url)
    with session_scope(engine) as session:
        session.add(WorkspaceStateRow(key="counter", value={"n": 0}, updated_at=datetime.now(UTC)))
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(5):
                with session_scope(engine) as session:
                    stmt = select(WorkspaceStateRow).where(WorkspaceStateRow.key == "counter")
                    if engine.dialect.name == "postgresql":
                        stmt = stmt.with_for_update()
                    row = session.scalars(stmt).one()
                    row.value = {"n": row.value["n"] + 1}
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with session_scope(engine) as session:
        assert session.get(WorkspaceStateRow, "counter").value == {"n": 80}  # type: ignore[union-attr]
    engine.dispose()


def test_sqlite_pragmas(tmp_path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'p.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_bad_urls_and_password_redaction() -> None:
    with pytest.raises(SpecError):
        make_engine("not a url")
    with pytest.raises(SpecError, match="unsupported"):
        make_engine("mysql://u@h/db")
    assert "hunter2" not in redact_url("postgresql+psycopg://u:hunter2@h/db")
