"""The audit log: append-only, hash-chained, and anchored outside the database.

Every entry carries the sha256 of its own fields and of the previous entry's hash, so editing, deleting or
reordering a row breaks the chain at that row. Deleting the *newest* rows leaves a valid shorter chain, so the
head (sequence number and hash) is also anchored outside the table: ``.archipel/audit-head.json``, authenticated
with an HMAC whose key is ``ARCHIPEL_AUDIT_KEY`` (hex) or ``.archipel/audit.key`` (created with mode 0600).
Appends are serialized by a file lock plus a locked head row, so sequence numbers are dense.

What ``verify`` proves, and what it cannot:

- Someone who can write the database but not the HMAC key cannot edit, delete, insert, reorder or truncate
  entries without ``verify`` naming the first entry affected.
- Someone who also holds the key (read access to ``.archipel/audit.key``, or the environment variable) can rewrite
  the whole log and re-anchor it: keep the key elsewhere (``ARCHIPEL_AUDIT_KEY`` from a secret store) and copy the
  head file off the machine now and then if that matters to you.
- Someone with file access but not the key can replace the head file and the database together by an *older*
  copy of both (a rollback): entries after that point vanish undetected unless a copy of a newer head exists.
- The log says what archipel did; a process that writes storage without archipel is not in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import hmac
import json
import os
import secrets
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from archipel.db.engine import session_scope
from archipel.db.orm import AuditHeadRow, AuditRow
from archipel.db.types import utcnow
from archipel.errors import SpecError
from archipel.policy.engine import Decision

__all__ = ["GENESIS", "AuditEntry", "AuditLog", "VerifyReport", "default_actor", "entry_hash"]

GENESIS = "0" * 64
HEAD_FILE = "audit-head.json"
KEY_FILE = "audit.key"
LOCK_FILE = "audit.lock"


def default_actor() -> str:
    """``ARCHIPEL_ACTOR``, else ``user@host``."""
    actor = os.environ.get("ARCHIPEL_ACTOR")
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _canonical(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def entry_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    sites: Sequence[str],
    outcome: str,
    rule: str | None,
    reason: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """The sha256 an entry must carry: over every field and the previous entry's hash."""
    payload = {
        "seq": seq,
        "at": at.isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "subject": subject,
        "sites": list(sites),
        "outcome": outcome,
        "rule": rule,
        "reason": reason,
        "details": details,
        "prev": prev_hash,
    }
    return hashlib.sha256(_canonical(payload)).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    sites: tuple[str, ...]
    outcome: str
    rule: str | None
    reason: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, row: AuditRow) -> AuditEntry:
        return cls(
            row.seq,
            row.at,
            row.actor,
            row.action,
            row.subject,
            tuple(row.sites),
            row.outcome,
            row.rule,
            row.reason,
            dict(row.details),
            row.prev_hash,
            row.hash,
        )

    def expected_hash(self) -> str:
        return entry_hash(
            seq=self.seq,
            at=self.at,
            actor=self.actor,
            action=self.action,
            subject=self.subject,
            sites=self.sites,
            outcome=self.outcome,
            rule=self.rule,
            reason=self.reason,
            details=self.details,
            prev_hash=self.prev_hash,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "sites": list(self.sites),
            "outcome": self.outcome,
            "rule": self.rule,
            "reason": self.reason,
            "details": self.details,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    entries: int
    """How many entries were checked."""
    head_seq: int
    bad_seq: int | None = None
    """The first entry that fails (None when ok, or when the problem is the anchor itself)."""
    problem: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head_seq": self.head_seq,
            "bad_seq": self.bad_seq,
            "problem": self.problem,
        }


class AuditLog:
    """The workspace's audit log in the metadata store, anchored in ``state_dir``."""

    def __init__(self, engine: Engine, state_dir: Path) -> None:
        self.engine = engine
        self.state_dir = Path(state_dir)

    # -- the anchor -------------------------------------------------------------------------------------------

    def _key(self) -> bytes:
        env = os.environ.get("ARCHIPEL_AUDIT_KEY")
        if env:
            try:
                key = bytes.fromhex(env)
            except ValueError:
                raise SpecError("ARCHIPEL_AUDIT_KEY must be hex (e.g. from `openssl rand -hex 32`)") from None
            if len(key) < 16:
                raise SpecError("ARCHIPEL_AUDIT_KEY must hold at least 16 bytes (32 hex characters)")
            return key
        path = self.state_dir / KEY_FILE
        try:
            return bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            pass
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        return bytes.fromhex(path.read_text().strip())

    def _mac(self, body: Mapping[str, Any]) -> str:
        return hmac.new(self._key(), _canonical(body), hashlib.sha256).hexdigest()

    def _write_head(self, committed: Mapping[str, Any], pending: Mapping[str, Any] | None) -> None:
        body = {"committed": dict(committed), "pending": dict(pending) if pending else None}
        path = self.state_dir / HEAD_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump({**body, "mac": self._mac(body)}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def _read_head(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.state_dir / HEAD_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"invalid": True}
        body = {"committed": data.get("committed"), "pending": data.get("pending")}
        if not hmac.compare_digest(str(data.get("mac", "")), self._mac(body)):
            return {"invalid": True}
        return body

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- appending --------------------------------------------------------------------------------------------

    def record(
        self,
        *,
        action: str,
        subject: str,
        outcome: str,
        reason: str,
        sites: Sequence[str] = (),
        rule: str | None = None,
        details: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> AuditEntry:
        """Append one entry. ``outcome``: allowed, refused, done or failed. Returns the entry as stored."""
        clean_details = json.loads(json.dumps(dict(details or {}), default=str))
        with self._locked():
            with session_scope(self.engine) as session:
                head = session.scalars(
                    select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update()
                ).first()
                if head is None:
                    head = AuditHeadRow(id=1, seq=0, hash=GENESIS)
                    session.add(head)
                seq, prev = head.seq + 1, head.hash
                fields = {
                    "seq": seq,
                    "at": utcnow(),
                    "actor": actor or default_actor(),
                    "action": action,
                    "subject": subject,
                    "sites": list(sites),
                    "outcome": outcome,
                    "rule": rule,
                    "reason": reason,
                    "details": clean_details,
                    "prev_hash": prev,
                }
                digest = entry_hash(**fields)
                session.add(AuditRow(**fields, hash=digest))
                head.seq, head.hash = seq, digest
                session.flush()
                # anchor first as pending: a crash between here and the commit leaves a head verify accepts
                self._write_head({"seq": seq - 1, "hash": prev}, {"seq": seq, "hash": digest})
            self._write_head({"seq": seq, "hash": digest}, None)
        return AuditEntry(**{**fields, "sites": tuple(fields["sites"])}, hash=digest)

    def record_decision(
        self, decision: Decision, *, details: Mapping[str, Any] | None = None, actor: str | None = None
    ) -> AuditEntry:
        """Append a policy decision (allowed or refused) with its rule and reason."""
        return self.record(
            action=f"policy.{decision.action}",
            subject=decision.subject,
            sites=[decision.site],
            outcome="allowed" if decision.allowed else "refused",
            rule=decision.rule,
            reason=decision.reason,
            details={**({"origin": decision.origin} if decision.origin else {}), **dict(details or {})},
            actor=actor,
        )

    # -- reading ----------------------------------------------------------------------------------------------

    def entries(
        self,
        *,
        since: datetime | None = None,
        action: str | None = None,
        subject: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Entries oldest first; ``action`` matches a prefix (``policy.`` for every decision)."""
        query = select(AuditRow)
        if since is not None:
            query = query.where(AuditRow.at >= since)
        if action:
            query = query.where(AuditRow.action.startswith(action))
        if subject:
            query = query.where(AuditRow.subject == subject)
        query = query.order_by(AuditRow.seq.desc())
        if limit:
            query = query.limit(limit)
        with session_scope(self.engine) as session:
            rows = [AuditEntry.of(row) for row in session.scalars(query)]
        return rows[::-1]

    def verify(self) -> VerifyReport:
        """Walk the chain from the first entry and check the anchor; name the first entry that fails."""
        checked, prev, expected_seq = 0, GENESIS, 1
        with session_scope(self.engine) as session:
            for row in session.scalars(select(AuditRow).order_by(AuditRow.seq)).yield_per(1000):
                entry = AuditEntry.of(row)
                if entry.seq != expected_seq:
                    return VerifyReport(
                        False, checked, expected_seq - 1, expected_seq,
                        f"entry {expected_seq} is missing (deleted): the next entry is {entry.seq}",
                    )  # fmt: skip
                if entry.expected_hash() != entry.hash:
                    return VerifyReport(
                        False, checked, entry.seq, entry.seq,
                        f"entry {entry.seq} was modified: its fields no longer hash to its recorded hash",
                    )  # fmt: skip
                if entry.prev_hash != prev:
                    return VerifyReport(
                        False, checked, entry.seq, entry.seq,
                        f"entry {entry.seq} does not follow entry {entry.seq - 1} (reordered, replaced or inserted)",
                    )  # fmt: skip
                prev, expected_seq, checked = entry.hash, expected_seq + 1, checked + 1
        last = expected_seq - 1
        return self._check_anchor(checked, last, prev)

    def _check_anchor(self, checked: int, last: int, last_hash: str) -> VerifyReport:
        head = self._read_head()
        if head is None:
            if checked == 0:
                return VerifyReport(True, 0, 0)
            return VerifyReport(False, checked, last, None, f"the head anchor {HEAD_FILE} is missing")
        if head.get("invalid"):
            return VerifyReport(
                False,
                checked,
                last,
                None,
                f"the head anchor {HEAD_FILE} fails its HMAC (edited, or another key)",
            )
        anchors = [a for a in (head["committed"], head["pending"]) if a]
        if any(a["seq"] == last and a["hash"] == last_hash for a in anchors):
            return VerifyReport(True, checked, last)
        anchored = max(a["seq"] for a in anchors)
        if last < anchored:
            first_missing = last + 1
            return VerifyReport(
                False, checked, last, first_missing,
                f"entries {first_missing}..{anchored} were deleted: the anchored head is entry {anchored}",
            )  # fmt: skip
        if last > anchored:
            return VerifyReport(
                False, checked, last, anchored + 1,
                f"entries {anchored + 1}..{last} are not anchored: written outside archipel",
            )  # fmt: skip
        return VerifyReport(
            False,
            checked,
            last,
            last,
            f"entry {last} differs from the anchored head (replaced with a valid chain)",
        )
