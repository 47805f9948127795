"""``archipel chaos``: break a site on purpose, to see recovery work (and to test it).

``kill_site`` marks the site unreachable in the metadata store (the planner and the reconciler then avoid it)
and kills every job its compute runs, at once (SIGKILL, no grace), as a lost region or a preempted fleet would;
with ``storage=True`` a local site's storage folder is moved aside, so its bytes (checkpoints included) cannot
be read until ``revive_site``. Everything is audited.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine

from archipel.db.engine import session_scope
from archipel.db.orm import SiteRow
from archipel.db.types import utcnow
from archipel.errors import NotFound, SpecError
from archipel.policy.audit import AuditLog
from archipel.workspace import Workspace

__all__ = ["kill_site", "revive_site"]

_ASIDE = ".archipel-chaos-unreachable"


def _storage_root(workspace: Workspace, site: str) -> Path:
    url = workspace.storage_url(site)
    if not url.startswith("file://"):
        raise SpecError(f"chaos can make only local (file://) storage unreachable; {site} has {url}")
    return Path(unquote(urlsplit(url).path))


def _set_health(engine: Engine, site: str, health: str, detail: dict[str, Any]) -> None:
    with session_scope(engine) as session:
        row = session.get(SiteRow, site)
        if row is None:
            raise NotFound(f"site {site} is not applied yet; run `archipel apply`")
        row.health, row.health_detail = health, {**detail, "at": utcnow().isoformat()}


def kill_site(workspace: Workspace, engine: Engine, site: str, *, storage: bool = False) -> list[str]:
    """Mark ``site`` unreachable, kill its running jobs; return the ids of the jobs killed."""
    workspace.site(site)
    _set_health(engine, site, "unreachable", {"chaos": True, "storage": storage})
    compute = workspace.compute(site)
    killed = []
    for job in compute.list_jobs():
        if not job.state.terminal:
            compute.cancel(job.job_id, grace_s=0)
            killed.append(job.job_id)
    if storage:
        root = _storage_root(workspace, site)
        if root.exists():
            os.replace(root, root.with_name(root.name + _ASIDE))
    AuditLog(engine, workspace.state_dir).record(
        action="chaos.kill_site",
        subject=site,
        sites=[site],
        outcome="done",
        reason=f"killed {len(killed)} jobs" + ("; storage made unreachable" if storage else ""),
        details={"jobs": killed},
    )
    return killed


def revive_site(workspace: Workspace, engine: Engine, site: str) -> None:
    """Undo ``kill_site``: storage back in place, health unknown until the next ``sites check``."""
    workspace.site(site)
    try:
        root = _storage_root(workspace, site)
    except SpecError:
        root = None
    if root is not None and root.with_name(root.name + _ASIDE).exists():
        if root.exists():
            root.rmdir()  # an empty folder something recreated while the site was down
        os.replace(root.with_name(root.name + _ASIDE), root)
    _set_health(engine, site, "unknown", {"chaos": False})
    AuditLog(engine, workspace.state_dir).record(
        action="chaos.revive_site", subject=site, sites=[site], outcome="done", reason="revived"
    )
