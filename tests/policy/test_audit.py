"""The audit log on SQLite and PostgreSQL: a hash chain anchored outside the table; tampering is named."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from archipel.db import connect, session_scope
from archipel.db.orm import AuditHeadRow, AuditRow
from archipel.policy import Place, Subject, evaluate
from archipel.policy.audit import HEAD_FILE, AuditLog


@pytest.fixture
def audit(db_url: str, tmp_path: Path):
    engine = connect(db_url)
    log = AuditLog(engine, tmp_path / "state")
    yield log
    engine.dispose()


def _fill(log: AuditLog, n: int = 6) -> None:
    for i in range(n):
        log.record(
            action="data.add", subject=f"ds-{i}", outcome="done", reason=f"added {i}", details={"i": i}
        )


def test_entries_chain_and_verify(audit: AuditLog) -> None:
    assert audit.verify().ok  # empty
    _fill(audit)
    entries = audit.entries()
    assert [e.seq for e in entries] == list(range(1, 7))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    report = audit.verify()
    assert report.ok and report.entries == 6 and report.head_seq == 6


def test_decisions_are_recorded_with_rule_and_reason(audit: AuditLog) -> None:
    decision = evaluate(
        "replicate", Subject("dataset", "patients", "phi", "EU"), Place("aws-us-east-1", "aws", "US")
    )
    entry = audit.record_decision(decision)
    assert entry.outcome == "refused" and entry.rule == "default-personal-data-residency"
    assert entry.action == "policy.replicate" and entry.sites == ("aws-us-east-1",)
    assert audit.entries(action="policy.")[0].reason == decision.reason


def _tamper(audit: AuditLog, statement) -> None:
    with session_scope(audit.engine) as session:
        session.execute(statement)


def test_an_edited_entry_is_named(audit: AuditLog) -> None:
    _fill(audit)
    _tamper(audit, update(AuditRow).where(AuditRow.seq == 3).values(reason="nothing to see"))
    report = audit.verify()
    assert not report.ok and report.bad_seq == 3 and "entry 3 was modified" in report.problem


def test_a_deleted_entry_is_named(audit: AuditLog) -> None:
    _fill(audit)
    _tamper(audit, delete(AuditRow).where(AuditRow.seq == 4))
    report = audit.verify()
    assert not report.ok and report.bad_seq == 4 and "missing" in report.problem


def test_reordered_entries_are_named(audit: AuditLog) -> None:
    _fill(audit)
    with session_scope(audit.engine) as session:
        a, b = (session.get(AuditRow, 2), session.get(AuditRow, 3))
        fields = [
            "at",
            "actor",
            "action",
            "subject",
            "sites",
            "outcome",
            "rule",
            "reason",
            "details",
            "prev_hash",
            "hash",
        ]
        swapped = {f: getattr(a, f) for f in fields}
        for f in fields:
            setattr(a, f, getattr(b, f))
            setattr(b, f, swapped[f])
    report = audit.verify()
    assert not report.ok and report.bad_seq == 2


def test_a_recomputed_chain_still_fails_the_anchor(audit: AuditLog) -> None:
    """An attacker who rewrites an entry *and* recomputes every later hash is caught by the anchored head."""
    from archipel.policy.audit import entry_hash

    _fill(audit)
    with session_scope(audit.engine) as session:
        prev = session.get(AuditRow, 2).hash
        for seq in range(3, 7):
            row = session.get(AuditRow, seq)
            if seq == 3:
                row.reason = "rewritten"
            row.prev_hash = prev
            row.hash = entry_hash(
                seq=row.seq, at=row.at, actor=row.actor, action=row.action, subject=row.subject, sites=row.sites,
                outcome=row.outcome, rule=row.rule, reason=row.reason, details=row.details, prev_hash=prev,
            )  # fmt: skip
            prev = row.hash
    report = audit.verify()
    assert not report.ok and "differs from the anchored head" in report.problem


def test_deleting_the_newest_entries_is_caught(audit: AuditLog) -> None:
    _fill(audit)
    _tamper(audit, delete(AuditRow).where(AuditRow.seq >= 5))
    _tamper(audit, update(AuditHeadRow).values(seq=4))
    report = audit.verify()
    assert not report.ok and report.bad_seq == 5 and "entries 5..6 were deleted" in report.problem


def test_a_forged_head_file_is_caught(audit: AuditLog) -> None:
    _fill(audit)
    path = audit.state_dir / HEAD_FILE
    head = json.loads(path.read_text())
    head["committed"]["seq"] = 4
    path.write_text(json.dumps(head))
    report = audit.verify()
    assert not report.ok and "HMAC" in report.problem


def test_appended_rows_outside_archipel_are_not_anchored(audit: AuditLog, tmp_path: Path) -> None:
    _fill(audit, 3)
    stranger = AuditLog(audit.engine, tmp_path / "elsewhere")  # a writer without this workspace's anchor
    stranger.record(action="data.erase", subject="ds-0", outcome="done", reason="sneaky")
    report = audit.verify()
    assert not report.ok and report.bad_seq == 4 and "not anchored" in report.problem


def test_concurrent_appends_get_dense_sequence_numbers(audit: AuditLog) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(5):
                audit.record(action="t", subject=f"w{n}-{i}", outcome="done", reason="")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [e.seq for e in audit.entries()] == list(range(1, 21))
    assert audit.verify().ok


def test_the_key_file_is_private(audit: AuditLog) -> None:
    _fill(audit, 1)
    assert (audit.state_dir / "audit.key").stat().st_mode & 0o077 == 0
