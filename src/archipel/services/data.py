"""Datasets as a user handles them: add, list, show, read, replicate, erase; every step policy-checked and audited.

Each function takes the workspace and the metadata store's engine, checks policy *before* any byte moves, records
the decision and the outcome in the audit log, and (for replication) the egress in the cost ledger. Network and
storage work happens outside database transactions (STYLE 10).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, select

from archipel.backends.storage.keys import validate_key
from archipel.cost.ledger import GB, add_entry, egress_rate
from archipel.data.ingest import DatasetRef, ingest_file, parse_ref, read_parquet
from archipel.db.engine import session_scope
from archipel.db.orm import DatasetReplicaRow, DatasetRow, DatasetVersionRow
from archipel.db.types import utcnow
from archipel.errors import Conflict, IntegrityError, NotFound, PolicyViolation, SpecError
from archipel.models.policy import CLASSIFICATIONS
from archipel.policy.audit import AuditLog
from archipel.policy.engine import Decision, Place, Subject, evaluate
from archipel.workspace import Workspace

if TYPE_CHECKING:
    import pyarrow as pa

    from archipel.transfer.engine import TransferResult
    from archipel.transfer.sealed import DataKey

__all__ = [
    "DatasetView",
    "EraseReport",
    "ReplicateReport",
    "VersionView",
    "add_dataset",
    "check_policy",
    "erase_dataset",
    "get_dataset",
    "list_datasets",
    "read_dataset",
    "replicate_dataset",
    "resolve_version",
]


@dataclass(frozen=True)
class VersionView:
    dataset: str
    version: int
    sha256: str
    bytes: int
    rows: int
    columns: list[dict[str, Any]]
    key: str
    source: str
    created_at: datetime
    erased_at: datetime | None
    replicas: dict[str, str | None] = field(default_factory=dict)
    """Site → key id when sealed (None when stored in plaintext)."""

    @property
    def ref(self) -> str:
        return f"{self.dataset}@v{self.version}"

    def as_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "version": self.version,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "rows": self.rows,
            "columns": self.columns,
            "key": self.key,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
            "erased_at": self.erased_at.isoformat() if self.erased_at else None,
            "replicas": {site: {"sealed_key_id": kid} for site, kid in sorted(self.replicas.items())},
        }


@dataclass(frozen=True)
class DatasetView:
    name: str
    classification: str
    jurisdiction: str
    home_site: str
    description: str
    created_at: datetime
    versions: list[VersionView]

    @property
    def latest(self) -> VersionView | None:
        live = [v for v in self.versions if v.erased_at is None]
        return live[-1] if live else None

    def subject(self) -> Subject:
        return Subject("dataset", self.name, self.classification, self.jurisdiction, datasets=(self.name,))

    def as_json(self) -> dict[str, Any]:
        latest = self.latest
        return {
            "name": self.name,
            "classification": self.classification,
            "jurisdiction": self.jurisdiction,
            "home_site": self.home_site,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "latest": latest.ref if latest else None,
            "versions": [v.as_json() for v in self.versions],
        }


def _views(session: Any, names: list[str] | None = None) -> list[DatasetView]:
    query = select(DatasetRow).order_by(DatasetRow.name)
    if names is not None:
        query = query.where(DatasetRow.name.in_(names))
    datasets = list(session.scalars(query))
    out = []
    for ds in datasets:
        versions = list(
            session.scalars(
                select(DatasetVersionRow)
                .where(DatasetVersionRow.dataset == ds.name)
                .order_by(DatasetVersionRow.version)
            )
        )
        replicas: dict[int, dict[str, str | None]] = {}
        if versions:
            ids = [v.id for v in versions]
            for rep in session.scalars(
                select(DatasetReplicaRow).where(DatasetReplicaRow.version_id.in_(ids))
            ):
                replicas.setdefault(rep.version_id, {})[rep.site] = rep.sealed_key_id
        views = [
            VersionView(
                ds.name,
                v.version,
                v.sha256,
                v.bytes,
                v.rows,
                list(v.columns),
                v.key,
                v.source,
                v.created_at,
                v.erased_at,
                replicas.get(v.id, {}),
            )
            for v in versions
        ]
        out.append(
            DatasetView(
                ds.name,
                ds.classification,
                ds.jurisdiction,
                ds.home_site,
                ds.description,
                ds.created_at,
                views,
            )
        )
    return out


def list_datasets(engine: Engine) -> list[DatasetView]:
    with session_scope(engine) as session:
        return _views(session)


def get_dataset(engine: Engine, name: str) -> DatasetView:
    with session_scope(engine) as session:
        views = _views(session, [name])
    if not views:
        raise NotFound(f"no dataset {name!r}; `archipel data ls` lists them")
    return views[0]


def resolve_version(view: DatasetView, ref: DatasetRef) -> VersionView:
    """The version ``ref`` names (the newest live one without a version); NotFound when erased or absent."""
    if ref.version is None:
        if view.latest is None:
            raise NotFound(f"dataset {view.name} has no live version (erased?)")
        return view.latest
    for version in view.versions:
        if version.version == ref.version:
            if version.erased_at is not None:
                raise NotFound(f"{version.ref} was erased on {version.erased_at:%Y-%m-%d}")
            return version
    raise NotFound(
        f"dataset {view.name} has no version v{ref.version}; latest is {view.latest.ref if view.latest else '-'}"
    )


def _version_row(session: Any, dataset: str, version: int) -> DatasetVersionRow:
    query = select(DatasetVersionRow).where(
        DatasetVersionRow.dataset == dataset, DatasetVersionRow.version == version
    )
    return session.scalars(query).one()


def _place(workspace: Workspace, site: str) -> Place:
    return Place.of(site, workspace.site(site))


def _site_key(workspace: Workspace, site: str) -> DataKey:
    from archipel.transfer.sealed import load_key

    enc = workspace.site(site).encryption
    if enc is None:
        raise SpecError(f"site {site} has no data key (encryption: key_env or key_file)")
    key_file = (workspace.root / enc.key_file) if enc.key_file else None
    return load_key(key_file, enc.key_env)


def _decide(audit: AuditLog, decision: Decision, **details: Any) -> Decision:
    """Record the decision; raise :class:`PolicyViolation` when it refuses."""
    audit.record_decision(decision, details=details)
    if not decision.allowed:
        raise PolicyViolation(decision.reason, rule=decision.rule, reason=decision.reason)
    return decision


def _audit(workspace: Workspace, engine: Engine) -> AuditLog:
    return AuditLog(engine, workspace.state_dir)


# -- add ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddReport:
    version: VersionView
    created: bool
    """False when the content equals the latest version (no new version)."""


def add_dataset(
    workspace: Workspace,
    engine: Engine,
    name: str,
    path: Path,
    *,
    site: str | None = None,
    classification: str | None = None,
    jurisdiction: str | None = None,
    description: str = "",
    source: str | None = None,
) -> AddReport:
    """Ingest ``path`` as the next version of ``name`` at its home site, if the policy lets it be stored there.
    ``source`` says where the file came from, in the version's record and in errors (default: ``path``)."""
    ref = parse_ref(name)
    if ref.version is not None:
        raise SpecError(f"versions are assigned by archipel; add to {ref.name!r}, not {name!r}")
    try:
        existing: DatasetView | None = get_dataset(engine, ref.name)
    except NotFound:
        existing = None
    if existing is None:
        if site is None or classification is None:
            raise SpecError(f"new dataset {ref.name!r} needs --site and --classification")
        jurisdiction = jurisdiction or workspace.site(site).jurisdiction
    else:
        for given, have, what in (
            (site, existing.home_site, "home site"),
            (classification, existing.classification, "classification"),
            (jurisdiction, existing.jurisdiction, "jurisdiction"),
        ):
            if given is not None and given != have:
                raise Conflict(
                    f"dataset {ref.name} has {what} {have}; a new version cannot change it to {given}"
                )
        site, classification, jurisdiction = (
            existing.home_site,
            existing.classification,
            existing.jurisdiction,
        )
    assert site is not None and classification is not None and jurisdiction is not None
    if classification not in CLASSIFICATIONS:
        raise SpecError(f"unknown classification {classification!r}; use one of {', '.join(CLASSIFICATIONS)}")
    workspace.site(site)  # NotFound lists the sites
    ingested = ingest_file(path, shown=source)
    if existing is not None and existing.latest is not None and existing.latest.sha256 == ingested.sha256:
        return AddReport(existing.latest, created=False)  # nothing will be stored: nothing to decide
    audit = _audit(workspace, engine)
    subject = Subject("dataset", ref.name, classification, jurisdiction, datasets=(ref.name,))
    decision = _decide(
        audit, evaluate("store", subject, _place(workspace, site), rules=workspace.spec.policies)
    )
    key = validate_key(f"datasets/{ref.name}/{ingested.sha256}.parquet")
    store = workspace.storage(site)
    key_id = None
    if decision.encrypt:
        from archipel.transfer.sealed import seal_bytes

        data_key = _site_key(workspace, site)
        store.put(key, seal_bytes(ingested.data, data_key))
        key_id = data_key.key_id
    else:
        store.put(key, ingested.data, expected_sha256=ingested.sha256)
    stored = store.size(key)

    with session_scope(engine) as session:
        if session.get(DatasetRow, ref.name) is None:
            session.add(
                DatasetRow(
                    name=ref.name,
                    classification=classification,
                    jurisdiction=jurisdiction,
                    home_site=site,
                    description=description,
                    labels={},
                )
            )
            session.flush()
        number = (
            session.scalar(
                select(func.max(DatasetVersionRow.version)).where(DatasetVersionRow.dataset == ref.name)
            )
            or 0
        ) + 1
        row = DatasetVersionRow(
            dataset=ref.name,
            version=number,
            sha256=ingested.sha256,
            bytes=len(ingested.data),
            rows=ingested.rows,
            columns=ingested.columns,
            source=source or str(path),
            key=key,
        )
        session.add(row)
        session.flush()
        session.add(
            DatasetReplicaRow(version_id=row.id, site=site, sealed_key_id=key_id, stored_bytes=stored)
        )
    audit.record(
        action="data.add",
        subject=f"{ref.name}@v{number}",
        sites=[site],
        outcome="done",
        reason=f"ingested {Path(source or path).name}: {ingested.rows} rows, {len(ingested.data)} bytes as Parquet",
        details={"sha256": ingested.sha256, "classification": classification, "jurisdiction": jurisdiction},
    )
    return AddReport(
        resolve_version(get_dataset(engine, ref.name), DatasetRef(ref.name, number)), created=True
    )


# -- policy ---------------------------------------------------------------------------------------------------


def check_policy(
    workspace: Workspace,
    engine: Engine,
    ref_text: str,
    site: str,
    action: str = "process",
    origin: str | None = None,
) -> Decision:
    """Explain what the policy says about ``action`` on a dataset at ``site``, without acting (still audited)."""
    view = get_dataset(engine, parse_ref(ref_text).name)
    decision = evaluate(
        action, view.subject(), _place(workspace, site), origin, rules=workspace.spec.policies
    )
    _audit(workspace, engine).record_decision(decision, details={"dry_run": True})
    return decision


# -- read -----------------------------------------------------------------------------------------------------


def _nearest(workspace: Workspace, candidates: list[str], to_site: str) -> str:
    """The candidate site closest to ``to_site`` (itself first; then estimated latency; unknown regions last)."""
    if to_site in candidates:
        return to_site
    dst = workspace.site(to_site)

    def distance(name: str) -> tuple[float, str]:
        src = workspace.site(name)
        try:
            return workspace.catalog.latency_ms((src.provider, src.region), (dst.provider, dst.region)), name
        except NotFound:
            return float("inf"), name

    return min(candidates, key=distance)


def _read_replica(workspace: Workspace, version: VersionView, site: str) -> bytes:
    data = workspace.storage(site).get(version.key)
    if version.replicas.get(site):
        from archipel.transfer.sealed import open_bytes

        data = open_bytes(data, _site_key(workspace, site), where=f"{version.ref} at {site}")
    if hashlib.sha256(data).hexdigest() != version.sha256:
        raise IntegrityError(f"{version.ref} at {site} does not match its sha256 {version.sha256}")
    return data


def read_dataset(
    workspace: Workspace,
    engine: Engine,
    ref_text: str,
    *,
    at_site: str | None = None,
    as_pandas: bool = False,
) -> pa.Table | Any:
    """The dataset as an Arrow table (or pandas frame), read from the nearest replica ``at_site`` may process."""
    ref = parse_ref(ref_text)
    view = get_dataset(engine, ref.name)
    version = resolve_version(view, ref)
    at_site = at_site or view.home_site
    audit = _audit(workspace, engine)
    _decide(
        audit, evaluate("process", view.subject(), _place(workspace, at_site), rules=workspace.spec.policies)
    )
    source = _nearest(workspace, list(version.replicas), at_site)
    table = read_parquet(_read_replica(workspace, version, source))
    return table.to_pandas() if as_pandas else table


# -- replicate ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicateReport:
    ref: str
    source: str
    dest: str
    bytes_moved: int
    already_present: bool
    egress_usd: float
    egress_per_gb: float
    sealed: bool
    seconds: float
    decision: Decision

    def as_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "source": self.source,
            "dest": self.dest,
            "bytes_moved": self.bytes_moved,
            "already_present": self.already_present,
            "egress_usd": round(self.egress_usd, 8),
            "egress_per_gb": self.egress_per_gb,
            "sealed": self.sealed,
            "seconds": round(self.seconds, 4),
            "rule": self.decision.rule,
            "reason": self.decision.reason,
        }


def replicate_dataset(
    workspace: Workspace,
    engine: Engine,
    ref_text: str,
    to_site: str,
    *,
    streams: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> ReplicateReport:
    """Copy a dataset version to ``to_site``: refused before a byte moves unless the policy allows it there."""
    from archipel.transfer.engine import Endpoint, transfer

    ref = parse_ref(ref_text)
    view = get_dataset(engine, ref.name)
    version = resolve_version(view, ref)
    audit = _audit(workspace, engine)
    decision = _decide(
        audit,
        evaluate("replicate", view.subject(), _place(workspace, to_site), rules=workspace.spec.policies),
        ref=version.ref,
    )
    source = _nearest(workspace, list(version.replicas), to_site)
    src_key = _site_key(workspace, source) if version.replicas.get(source) else None
    dst_store = workspace.storage(to_site)
    dst_key = _site_key(workspace, to_site) if decision.encrypt else None
    result: TransferResult = transfer(
        Endpoint(workspace.storage(source), version.key, src_key),
        Endpoint(dst_store, version.key, dst_key),
        sha256=version.sha256,
        size=version.bytes,
        state_dir=workspace.state_dir / "transfers",
        streams=streams,
        progress=progress,
    )
    moved = 0 if source == to_site else result.bytes_moved
    rate = egress_rate(workspace, source, to_site)
    transfer_id = hashlib.sha256(
        f"{version.ref}:{source}:{to_site}:{utcnow().isoformat()}".encode()
    ).hexdigest()[:16]
    stored = dst_store.size(version.key)  # storage I/O before the transaction, not inside it
    with session_scope(engine) as session:
        row = _version_row(session, view.name, version.version)
        replica = session.scalars(
            select(DatasetReplicaRow).where(
                DatasetReplicaRow.version_id == row.id, DatasetReplicaRow.site == to_site
            )
        ).first()
        if replica is None:
            session.add(
                DatasetReplicaRow(
                    version_id=row.id,
                    site=to_site,
                    sealed_key_id=dst_key.key_id if dst_key else None,
                    stored_bytes=stored,
                )
            )
        else:
            replica.verified_at, replica.stored_bytes = utcnow(), stored
        if moved:
            src_site = workspace.site(source)
            add_entry(
                session,
                kind="egress",
                site=source,
                dest_site=to_site,
                provider=src_site.provider,
                quantity=moved / GB,
                unit="GB",
                unit_price_usd=rate,
                transfer_id=transfer_id,
                tags={"dataset": view.name},
                description=f"replicate {version.ref} {source} -> {to_site}",
            )
    audit.record(
        action="data.replicate",
        subject=version.ref,
        sites=[source, to_site],
        outcome="done",
        rule=decision.rule,
        reason=f"verified copy ({moved} bytes moved; sha256 {version.sha256[:12]}...)",
        details={"bytes_moved": moved, "egress_usd": moved / GB * rate, "transfer_id": transfer_id},
    )
    return ReplicateReport(
        version.ref,
        source,
        to_site,
        moved,
        result.already_present,
        moved / GB * rate,
        rate,
        dst_key is not None,
        result.seconds,
        decision,
    )


# -- erase ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EraseReport:
    refs: list[str]
    deleted: dict[str, list[str]]
    """Site → keys deleted there."""
    derived: dict[str, list[str]]
    """Models, checkpoints and request samples derived from the data (marked; none exist before the registry)."""

    def as_json(self) -> dict[str, Any]:
        return {"refs": self.refs, "deleted": self.deleted, "derived": self.derived}


def erase_dataset(workspace: Workspace, engine: Engine, ref_text: str) -> EraseReport:
    """Remove a version (or every version) from every replica; the catalog and the audit log keep the fact."""
    ref = parse_ref(ref_text)
    view = get_dataset(engine, ref.name)
    targets = [
        v for v in view.versions if v.erased_at is None and (ref.version is None or v.version == ref.version)
    ]
    if not targets:
        raise NotFound(f"{ref} has nothing left to erase")
    deleted: dict[str, list[str]] = {}
    shared = {v.key for v in view.versions if v.erased_at is None and v not in targets}
    for version in targets:
        for site in version.replicas:
            if version.key in shared:
                continue  # another live version has the same bytes
            workspace.storage(site).delete(version.key)
            deleted.setdefault(site, []).append(version.key)
    now = utcnow()
    with session_scope(engine) as session:
        for version in targets:
            row = _version_row(session, view.name, version.version)
            row.erased_at = now
            for replica in session.scalars(
                select(DatasetReplicaRow).where(DatasetReplicaRow.version_id == row.id)
            ):
                session.delete(replica)
    derived: dict[str, list[str]] = {"models": [], "checkpoints": [], "request_samples": []}
    refs = [v.ref for v in targets]
    _audit(workspace, engine).record(
        action="data.erase",
        subject=str(ref),
        sites=sorted(deleted),
        outcome="done",
        reason=f"erased {', '.join(refs)} from {len(deleted)} site(s)",
        details={"refs": refs, "derived": derived},
    )
    return EraseReport(refs, deleted, derived)
