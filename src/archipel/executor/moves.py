"""Moving a run's bytes between sites: upstream outputs to the step that reads them, checkpoints to a fallback.

Every move asks the policy engine first (``replicate`` for outputs, ``derive_export`` for checkpoints, which
are derived from the run's data), records the decision in the audit log, copies with the verified transfer
engine and writes the egress to the cost ledger. A refused move raises :class:`PolicyViolation` before a
byte is written at the destination.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from archipel.cost.ledger import GB, add_entry, egress_rate
from archipel.db.engine import session_scope
from archipel.errors import PolicyViolation
from archipel.policy.audit import AuditLog
from archipel.policy.engine import Place, Subject, evaluate
from archipel.transfer.engine import Endpoint, transfer
from archipel.workspace import Workspace

__all__ = ["allowed", "move_object", "require"]


def allowed(workspace: Workspace, action: str, subjects: Sequence[Subject], site: str) -> tuple[bool, str]:
    """Whether every subject allows ``action`` at ``site``; the first refusal's rule and reason if not."""
    place = Place.of(site, workspace.site(site))
    for subject in subjects:
        decision = evaluate(action, subject, place, rules=workspace.spec.policies)  # type: ignore[arg-type]
        if not decision.allowed:
            return False, f"{decision.rule}: {decision.reason}"
    return True, ""


def require(
    workspace: Workspace,
    audit: AuditLog,
    action: str,
    subjects: Sequence[Subject],
    place: Place,
    details: dict[str, Any],
    hint: str = "",
) -> None:
    """Every subject allows ``action`` at ``place``: each decision audited (with ``details``), PolicyViolation at
    the first refusal (its reason, then ``hint``)."""
    for subject in subjects:
        decision = evaluate(action, subject, place, rules=workspace.spec.policies)  # type: ignore[arg-type]
        audit.record_decision(decision, details=details)
        if not decision.allowed:
            raise PolicyViolation(decision.reason + hint, rule=decision.rule, reason=decision.reason)


def move_object(
    workspace: Workspace,
    engine: Engine,
    *,
    action: str,
    subjects: Sequence[Subject],
    what: str,
    key: str,
    sha256: str,
    size: int,
    src_site: str,
    dst_site: str,
    run_id: str | None,
    tags: dict[str, Any],
) -> int:
    """Copy ``key`` from ``src_site`` to ``dst_site`` if the policies allow it; return the bytes moved."""
    audit = AuditLog(engine, workspace.state_dir)
    require(workspace, audit, action, subjects, Place.of(dst_site, workspace.site(dst_site)),
            {"run": run_id, "object": what, "from": src_site})  # fmt: skip
    result = transfer(
        Endpoint(workspace.storage(src_site), key),
        Endpoint(workspace.storage(dst_site), key),
        sha256=sha256,
        size=size,
        state_dir=workspace.state_dir / "transfers",
    )
    if result.bytes_moved:
        rate = egress_rate(workspace, src_site, dst_site)
        with session_scope(engine) as session:
            add_entry(
                session,
                kind="egress",
                site=src_site,
                dest_site=dst_site,
                provider=workspace.site(src_site).provider,
                quantity=result.bytes_moved / GB,
                unit="GB",
                unit_price_usd=rate,
                tags=tags,
                run_id=run_id,
                description=f"{what} {src_site} -> {dst_site}",
            )
    return result.bytes_moved
