"""The demo's last step: what the story cost, by site and by provider, from the cost ledger; and the audit log's
hash chain verified from its first entry to its anchored head."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from sqlalchemy import Engine

from archipel.cli import render_cost, render_data
from archipel.cost.report import report
from archipel.db.engine import session_scope
from archipel.policy.audit import AuditLog
from archipel.workspace import Workspace

__all__ = ["ledger_step"]


def ledger_step(workspace: Workspace, engine: Engine, out: Console) -> tuple[dict[str, Any], dict[str, bool]]:
    with session_scope(engine) as session:
        by_site = report(session, by="site", budgets=workspace.spec.budgets)
        by_provider = report(session, by="provider")
        by_kind = report(session, by="kind")
    render_cost.report(by_site)
    render_cost.report(by_provider)
    log = AuditLog(engine, workspace.state_dir)
    verified = log.verify()
    render_data.verify_report(verified)
    actions: dict[str, int] = {}
    for entry in log.entries():
        family = entry.action.split(".")[0]
        actions[family] = actions.get(family, 0) + 1
    kinds = {row.key: round(row.total_usd, 6) for row in by_kind.rows}
    out.print(
        f"The whole story cost ${by_site.total.total_usd:.6f} in {by_site.total.entries} ledger entries "
        f"({', '.join(f'{k} ${v:.6f}' for k, v in kinds.items())}); the audit log holds {verified.entries} "
        f"decisions and events ({', '.join(f'{k} {n}' for k, n in sorted(actions.items()))}), chain "
        f"{'intact' if verified.ok else 'BROKEN'}."
    )
    summary = {
        "total_usd": round(by_site.total.total_usd, 6),
        "entries": by_site.total.entries,
        "by_site": {row.key: round(row.total_usd, 6) for row in by_site.rows},
        "by_provider": {row.key: round(row.total_usd, 6) for row in by_provider.rows},
        "by_kind": kinds,
        "audit": {"entries": verified.entries, "ok": verified.ok, "by_action": actions},
    }
    checks = {
        "ledger_adds_up": abs(sum(r.total_usd for r in by_site.rows) - by_site.total.total_usd) < 1e-9
        and abs(sum(r.total_usd for r in by_provider.rows) - by_site.total.total_usd) < 1e-9
        and by_site.total.total_usd > 0,  # (compared before rounding: the summary's figures are rounded)
        "audit_verified": verified.ok and verified.entries > 0,
    }
    return summary, checks
