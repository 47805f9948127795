"""A named lease in the metadata store, so several control processes can run and one acts at a time."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from archipel.db.engine import session_scope
from archipel.db.orm import LeaseRow
from archipel.db.types import utcnow

__all__ = ["LEASE_S", "holder_of", "release", "try_acquire"]

LEASE_S = 10.0
"""A holder that stops renewing loses the lease after this long; another process then takes over."""


def try_acquire(engine: Engine, name: str, holder: str, ttl_s: float = LEASE_S) -> bool:
    """Take or renew the lease; True while ``holder`` holds it. One short transaction, row-locked."""
    now = utcnow()
    try:
        with session_scope(engine) as session:
            row = session.scalars(select(LeaseRow).where(LeaseRow.name == name).with_for_update()).first()
            if row is None:
                session.add(LeaseRow(name=name, holder=holder, expires_at=now + timedelta(seconds=ttl_s)))
                return True
            if row.holder != holder and row.expires_at > now:
                return False
            row.holder, row.expires_at = holder, now + timedelta(seconds=ttl_s)
            return True
    except DBIntegrityError:  # another process inserted it first
        return False


def holder_of(engine: Engine, name: str) -> str | None:
    """Who holds the lease now (None if nobody, or it expired)."""
    with session_scope(engine) as session:
        row = session.get(LeaseRow, name)
        return row.holder if row is not None and row.expires_at > utcnow() else None


def release(engine: Engine, name: str, holder: str) -> None:
    with session_scope(engine) as session:
        session.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder))
