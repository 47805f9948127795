"""``archipel apply``: validate ``archipel.yaml`` and sync it into the metadata store, diff first."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from archipel.db.engine import session_scope
from archipel.db.orm import SiteRow, WorkspaceStateRow
from archipel.db.types import utcnow
from archipel.models.site import SiteSpec
from archipel.policy.audit import AuditLog
from archipel.workspace import Workspace

__all__ = ["ApplyPlan", "FieldChange", "SiteChange", "apply_plan", "plan_apply", "spec_hash"]


def spec_hash(data: Any) -> str:
    """sha256 of canonical JSON: equal specs hash equal whatever their key order."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _site_data(site: SiteSpec) -> dict[str, Any]:
    return site.model_dump(mode="json")


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any


@dataclass(frozen=True)
class SiteChange:
    name: str
    action: str  # "add" | "change" | "remove"
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class ApplyPlan:
    """What ``apply`` would change; empty ``changes`` means the store already matches the file."""

    changes: tuple[SiteChange, ...]
    unchanged: tuple[str, ...]
    desired: dict[str, dict[str, Any]] = field(repr=False)

    @property
    def empty(self) -> bool:
        return not self.changes

    def counts(self) -> dict[str, int]:
        out = {"add": 0, "change": 0, "remove": 0}
        for change in self.changes:
            out[change.action] += 1
        return out


def _diff(old: Any, new: Any, path: str = "") -> list[FieldChange]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[FieldChange] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            out.extend(_diff(old.get(key), new.get(key), sub))
        return out
    return [] if old == new else [FieldChange(path, old, new)]


def plan_apply(workspace: Workspace, engine: Engine) -> ApplyPlan:
    """Compare the file's sites with the store's; reads only."""
    desired = {name: _site_data(site) for name, site in workspace.spec.sites.items()}
    with session_scope(engine) as session:
        current = {row.name: dict(row.spec) for row in session.scalars(select(SiteRow))}
    changes: list[SiteChange] = []
    unchanged: list[str] = []
    for name in sorted(set(desired) | set(current)):
        if name not in current:
            changes.append(SiteChange(name, "add", tuple(_diff({}, desired[name]))))
        elif name not in desired:
            changes.append(SiteChange(name, "remove"))
        else:
            fields = _diff(current[name], desired[name])
            if fields:
                changes.append(SiteChange(name, "change", tuple(fields)))
            else:
                unchanged.append(name)
    return ApplyPlan(tuple(changes), tuple(unchanged), desired)


def apply_plan(workspace: Workspace, engine: Engine, plan: ApplyPlan) -> None:
    """Write ``plan`` in one short transaction. The caller has shown the plan and got consent."""
    now = utcnow()
    with session_scope(engine) as session:
        for change in plan.changes:
            row = session.get(SiteRow, change.name)
            if change.action == "remove":
                if row is not None:
                    session.delete(row)
                continue
            data = plan.desired[change.name]
            site = workspace.spec.sites[change.name]
            if row is None:
                row = SiteRow(name=change.name, created_at=now, health="unknown")
                session.add(row)
            row.provider = site.provider
            row.region = site.region
            row.jurisdiction = site.jurisdiction
            row.storage_url = site.storage
            row.compute_uri = site.compute
            row.enabled = site.enabled
            row.spec = data
            row.spec_hash = spec_hash(data)
            row.updated_at = now
            if change.action == "change" and any(
                f.path.split(".")[0] in ("storage", "storage_options", "compute") for f in change.fields
            ):
                row.health, row.health_detail, row.checked_at = "unknown", None, None
        state = session.get(WorkspaceStateRow, "applied")
        value = {
            "name": workspace.spec.name,
            "spec_hash": spec_hash(plan.desired),
            "file": str(workspace.file),
        }
        if state is None:
            session.add(WorkspaceStateRow(key="applied", value=value, updated_at=now))
        else:
            state.value = value
            state.updated_at = now
    if plan.changes:
        counts = plan.counts()
        AuditLog(engine, workspace.state_dir).record(
            action="workspace.apply",
            subject=workspace.spec.name,
            sites=sorted(change.name for change in plan.changes),
            outcome="done",
            reason=f"{counts['add']} site(s) added, {counts['change']} changed, {counts['remove']} removed",
            details={
                "changes": {c.name: c.action for c in plan.changes},
                "spec_hash": spec_hash(plan.desired),
            },
        )
