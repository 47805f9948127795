"""Sites: list them with their health, and check that each one's storage and compute really work."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from archipel.db.engine import session_scope
from archipel.db.orm import SiteRow
from archipel.db.types import utcnow
from archipel.errors import ArchipelError
from archipel.models.site import SiteSpec
from archipel.services.apply import plan_apply
from archipel.workspace import Workspace

__all__ = ["CheckResult", "SiteCheck", "SiteView", "check_sites", "list_sites"]

PROBE_BYTES = 64 * 1024
PROBE_MARKER = "archipel-site-check"


@dataclass(frozen=True)
class SiteView:
    name: str
    spec: SiteSpec
    health: str
    checked_at: datetime | None
    applied: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.spec.provider,
            "region": self.spec.region,
            "jurisdiction": self.spec.jurisdiction,
            "storage": self.spec.storage,
            "compute": self.spec.compute,
            "capacity": self.spec.capacity.model_dump(mode="json"),
            "labels": dict(self.spec.labels),
            "enabled": self.spec.enabled,
            "health": self.health,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "applied": self.applied,
        }


def list_sites(workspace: Workspace, engine: Engine) -> tuple[list[SiteView], bool]:
    """The file's sites with their last known health, and whether the store matches the file."""
    with session_scope(engine) as session:
        rows = {row.name: row for row in session.scalars(select(SiteRow))}
    pending = not plan_apply(workspace, engine).empty
    views = []
    for name, site in workspace.spec.sites.items():
        row = rows.get(name)
        views.append(
            SiteView(
                name=name,
                spec=site,
                health=row.health if row else "unknown",
                checked_at=row.checked_at if row else None,
                applied=row is not None and row.spec == site.model_dump(mode="json"),
            )
        )
    return views, pending


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    seconds: float
    detail: str


@dataclass(frozen=True)
class SiteCheck:
    site: str
    storage: CheckResult
    compute: CheckResult
    checked_at: datetime = field(default_factory=utcnow)

    @property
    def health(self) -> str:
        if self.storage.ok and self.compute.ok:
            return "healthy"
        return "degraded" if self.storage.ok or self.compute.ok else "unreachable"

    def as_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "health": self.health,
            "storage": {
                "ok": self.storage.ok,
                "seconds": round(self.storage.seconds, 4),
                "detail": self.storage.detail,
            },
            "compute": {
                "ok": self.compute.ok,
                "seconds": round(self.compute.seconds, 4),
                "detail": self.compute.detail,
            },
            "checked_at": self.checked_at.isoformat(),
        }


def _check_storage(workspace: Workspace, name: str) -> CheckResult:
    """Write, list, read back (verified) and delete a random probe object."""
    start = time.perf_counter()
    key = f"_archipel/probe/{uuid.uuid4().hex}"
    payload = os.urandom(PROBE_BYTES)
    try:
        store = workspace.storage(name)
        store.put(key, payload)
        listed = {info.key for info in store.list("_archipel/probe/")}
        if key not in listed:
            return CheckResult(False, time.perf_counter() - start, "probe written but not listed")
        if store.get(key) != payload:
            return CheckResult(False, time.perf_counter() - start, "probe read back with different bytes")
        store.delete(key)
        if store.exists(key):
            return CheckResult(False, time.perf_counter() - start, "probe still exists after delete")
    except ArchipelError as exc:
        return CheckResult(False, time.perf_counter() - start, str(exc))
    except Exception as exc:  # a backend SDK error we did not map yet: report it, keep checking others
        return CheckResult(False, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - start
    return CheckResult(
        True, elapsed, f"write/list/read/delete of {PROBE_BYTES // 1024} KiB in {elapsed * 1000:.0f} ms"
    )


def _check_compute(workspace: Workspace, name: str, timeout_s: float) -> CheckResult:
    """Run a trivial process and read its output back from the logs."""
    from archipel.backends.compute.base import LaunchRequest, Resources, WithForget

    start = time.perf_counter()
    try:
        compute = workspace.compute(name)
        job = compute.launch(
            LaunchRequest(command=f"echo {PROBE_MARKER}", name="site-check", resources=Resources(cpus=0))
        )
        status = compute.wait(job, timeout_s=timeout_s)
        text, _ = compute.logs(job)
        if status.state != "SUCCEEDED":
            compute.cancel(job, grace_s=1)
            return CheckResult(
                False, time.perf_counter() - start, f"probe job ended {status.state}: {status.message}"
            )
        if PROBE_MARKER not in text:
            return CheckResult(
                False, time.perf_counter() - start, "probe job succeeded but its output was not logged"
            )
        if isinstance(compute, WithForget):  # backends that keep ended jobs: do not pile up probes
            compute.forget(job)
    except ArchipelError as exc:
        return CheckResult(False, time.perf_counter() - start, str(exc))
    except Exception as exc:
        return CheckResult(False, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - start
    return CheckResult(True, elapsed, f"ran a process and read its log in {elapsed * 1000:.0f} ms")


def check_sites(
    workspace: Workspace, engine: Engine, names: list[str] | None = None, *, timeout_s: float = 30.0
) -> list[SiteCheck]:
    """Check each site (all when ``names`` is empty) in parallel, then record health in one transaction."""
    wanted = names or list(workspace.spec.sites)
    for name in wanted:
        workspace.site(name)  # NotFound before any work

    def one(name: str) -> SiteCheck:
        return SiteCheck(name, _check_storage(workspace, name), _check_compute(workspace, name, timeout_s))

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(wanted)))) as pool:
        results = list(pool.map(one, wanted))
    with session_scope(engine) as session:
        for result in results:
            row = session.get(SiteRow, result.site)
            if row is None:
                continue  # not applied yet: nothing to record against
            row.health = result.health
            row.health_detail = result.as_json()
            row.storage_latency_s = result.storage.seconds
            row.checked_at = result.checked_at
    return results
