"""The model registry's use cases: register, list, show, alias, promote through gates, roll back, replicate,
predict. Versions are ONNX artifacts in a site's storage (content-addressed), rows in the metadata store.

Version numbers are dense and monotonic under concurrency: the artifact is stored first (content-addressed, so
a failed registration leaves no row and burns no number), then one short transaction locks the model's row
(``SELECT ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE``), takes ``latest_version + 1`` and inserts the version.
A model inherits the residency of its training data: its classification is the most restrictive of its
datasets', and every copy to another site is a ``derive_export`` decision of the policy engine, audited.

A version registered with evaluation data also has a drift reference (per-feature quantile grids of that data:
close to raw values, so as restricted as the data). It lives only in site storage, content-addressed next to the
ONNX (``models/NAME/SHA256.drift-reference.json``), travels with every replica under the same decision, and the
card in the metadata store holds only a pointer to it: ``{"key", "sha256", "bytes"}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from archipel.data.ingest import parse_ref
from archipel.db.engine import session_scope
from archipel.db.orm import ModelAliasEventRow, ModelAliasRow, ModelReplicaRow, ModelRow, ModelVersionRow
from archipel.db.types import utcnow
from archipel.errors import Conflict, IntegrityError, NotFound, PolicyViolation, SpecError
from archipel.executor.moves import move_object, require
from archipel.models.gates import ClauseResult, evaluate_gate
from archipel.policy.audit import AuditLog
from archipel.policy.engine import Place, Subject
from archipel.registry.card import store_drift_reference
from archipel.registry.convert import Converted
from archipel.services.data import get_dataset, resolve_version
from archipel.workspace import Workspace

__all__ = [
    "ModelView",
    "Promotion",
    "VersionView",
    "delete_version",
    "drift_reference",
    "export_mlflow",
    "get_model",
    "get_version",
    "import_mlflow",
    "list_models",
    "parse_model_ref",
    "predict",
    "promote",
    "register_version",
    "replicate_model",
    "rollback",
    "set_alias",
    "update_model",
    "update_version",
]

_NAME = r"[a-z0-9][a-z0-9-]{0,62}"
_REF = re.compile(
    rf"^(?:models:/)?(?P<name>{_NAME})(?:/(?P<version>[1-9][0-9]*)|@v(?P<v>[1-9][0-9]*)|@(?P<alias>[a-z][a-z0-9-]{{0,62}}))?$"
)
_ORDER = ["public", "internal", "confidential", "pii", "phi"]


def parse_model_ref(text: str) -> tuple[str, int | None, str | None]:
    """``name``, ``name/3``, ``name@v3``, ``name@alias``, with or without ``models:/``: (name, version, alias)."""
    m = _REF.match(text.strip())
    if not m:
        raise SpecError(f"{text!r} is not a model reference; write NAME, NAME/N, NAME@vN or NAME@ALIAS")
    version = m["version"] or m["v"]
    return m["name"], int(version) if version else None, m["alias"]


@dataclass(frozen=True)
class VersionView:
    model: str
    version: int
    sha256: str
    bytes: int
    key: str
    flavor: str
    signature: dict[str, Any]
    metrics: dict[str, Any]
    params: dict[str, Any]
    lineage: dict[str, Any]
    card: dict[str, Any]
    classification: str
    jurisdiction: str
    home_site: str
    status: str
    description: str
    tags: dict[str, Any]
    created_at: datetime
    replicas: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.model}/{self.version}"

    def subjects(self) -> list[Subject]:
        """What residency a copy of this version answers to: each training dataset (or the model itself)."""
        datasets = self.lineage.get("datasets", [])
        if not datasets:
            return [Subject("model", self.ref, self.classification, self.jurisdiction)]
        return [
            Subject(
                "model", self.ref, d["classification"], d["jurisdiction"], datasets=(d["ref"].split("@")[0],)
            )
            for d in datasets
        ]

    def as_json(self, *, card: bool = True) -> dict[str, Any]:
        out = {**self.__dict__, "ref": self.ref, "created_at": self.created_at.isoformat()}
        if not card:
            out.pop("card")
        return out


@dataclass(frozen=True)
class ModelView:
    name: str
    description: str
    tags: dict[str, Any]
    created_at: datetime
    versions: list[VersionView]
    aliases: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "tags": self.tags,
            "created_at": self.created_at.isoformat(),
            "aliases": self.aliases,
            "versions": [v.as_json(card=False) for v in self.versions],
        }


def _version_view(session: Any, row: ModelVersionRow, aliases: dict[str, int]) -> VersionView:
    replicas = list(session.scalars(select(ModelReplicaRow.site).where(ModelReplicaRow.version_id == row.id)))
    return VersionView(
        row.model, row.version, row.sha256, row.bytes, row.key, row.flavor, dict(row.signature), dict(row.metrics),
        dict(row.params), dict(row.lineage), dict(row.card), row.classification, row.jurisdiction, row.home_site,
        row.status, row.description, dict(row.tags), row.created_at, sorted(replicas),
        sorted(a for a, v in aliases.items() if v == row.version),
    )  # fmt: skip


def _model_view(session: Any, row: ModelRow) -> ModelView:
    aliases = _aliases(session, row.name)
    versions = session.scalars(
        select(ModelVersionRow).where(ModelVersionRow.model == row.name).order_by(ModelVersionRow.version)
    )
    return ModelView(
        row.name, row.description, dict(row.tags), row.created_at,
        [_version_view(session, v, aliases) for v in versions], dict(sorted(aliases.items())),
    )  # fmt: skip


def list_models(engine: Engine) -> list[ModelView]:
    with session_scope(engine) as session:
        return [
            _model_view(session, row) for row in session.scalars(select(ModelRow).order_by(ModelRow.name))
        ]


def _model_row(session: Any, name: str) -> ModelRow:
    row = session.get(ModelRow, name)
    if row is None:
        known = ", ".join(session.scalars(select(ModelRow.name))) or "none"
        raise NotFound(f"no model {name!r}; registered: {known}")
    return row


def _aliases(session: Any, name: str) -> dict[str, int]:
    return {
        a.alias: a.version for a in session.scalars(select(ModelAliasRow).where(ModelAliasRow.model == name))
    }


def get_model(engine: Engine, name: str) -> ModelView:
    with session_scope(engine) as session:
        return _model_view(session, _model_row(session, name))


def get_version(engine: Engine, ref: str) -> VersionView:
    """The version ``ref`` names (``name`` alone: the latest active version); one row read, not the model's all."""
    name, version, alias = parse_model_ref(ref)
    with session_scope(engine) as session:
        row = _model_row(session, name)
        aliases = _aliases(session, name)
        if alias is not None:
            if alias not in aliases:
                raise NotFound(
                    f"model {name} has no alias {alias!r} (aliases: {', '.join(aliases) or 'none'})"
                )
            version = aliases[alias]
        query = select(ModelVersionRow).where(ModelVersionRow.model == name)
        if version is None:
            query = query.where(ModelVersionRow.status == "active").order_by(ModelVersionRow.version.desc())
        else:
            query = query.where(ModelVersionRow.version == version)
        found = session.scalars(query).first()
        if found is None:
            if version is None:
                raise NotFound(f"model {name} has no active version")
            raise NotFound(f"model {name} has no version {version}; latest is {row.latest_version or '-'}")
        return _version_view(session, found, aliases)


# -- register ---------------------------------------------------------------------------------------------------


def _lineage_datasets(engine: Engine, refs: list[str]) -> list[dict[str, Any]]:
    out = []
    for text in refs:
        ref = parse_ref(text)
        view = get_dataset(engine, ref.name)
        version = resolve_version(view, ref)
        out.append(
            {"ref": version.ref, "sha256": version.sha256, "classification": view.classification,
             "jurisdiction": view.jurisdiction}
        )  # fmt: skip
    return out


def _ensure_model(engine: Engine, name: str) -> None:
    try:
        with session_scope(engine) as session:
            if session.get(ModelRow, name) is None:
                session.add(ModelRow(name=name, latest_version=0, tags={}))
    except DBIntegrityError:
        pass  # registered concurrently: it exists now


def register_version(
    workspace: Workspace,
    engine: Engine,
    name: str,
    converted: Converted,
    *,
    site: str,
    datasets: list[str] | None = None,
    lineage: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
    stored: bool = False,
    drift_reference: dict[str, Any] | None = None,
) -> VersionView:
    """A new version of ``name`` at ``site``; ``datasets`` (refs) are its training data. ``stored`` says the ONNX
    is already in the site's storage under its content key (a job published it).

    ``drift_reference`` (:func:`archipel.registry.card.drift_reference`) is stored at ``site`` next to the ONNX,
    never in the metadata store: the card gets only its pointer. A ``card`` that already holds a pointer (a job
    stored the reference at the site) is checked to exist there."""
    if not re.fullmatch(_NAME, name):
        raise SpecError(f"model name {name!r}: lowercase letters, digits and '-', at most 63")
    workspace.site(site)
    sources = _lineage_datasets(engine, datasets or [])
    subjects = [
        Subject("model", name, d["classification"], d["jurisdiction"], datasets=(d["ref"].split("@")[0],))
        for d in sources
    ]
    audit = AuditLog(engine, workspace.state_dir)
    # the model lives at `site`: its training data must allow derived models there
    require(
        workspace, audit, "derive_export", subjects, Place.of(site, workspace.site(site)), {"model": name}
    )
    sha = hashlib.sha256(converted.onnx).hexdigest()
    key = f"models/{name}/{sha}.onnx"
    store = workspace.storage(site)
    if stored:
        if not store.exists(key):
            raise NotFound(f"the ONNX of {name} is not at {site} under {key}")
    elif not store.exists(key):
        store.put(key, converted.onnx, expected_sha256=sha)
    card = {**(card or {}), "conversion_check": converted.check}
    if drift_reference is not None:
        if "drift_reference" in card:
            raise SpecError("give the drift reference or a card pointing to a stored one, not both")
        card["drift_reference"] = store_drift_reference(store, name, drift_reference)
    elif (pointer := card.get("drift_reference")) is not None and not store.exists(
        _pointer_key(pointer, name)
    ):
        raise NotFound(f"the drift reference of {name} is not at {site} under {pointer['key']}")
    strictest = max(sources, key=lambda d: _ORDER.index(d["classification"]), default=None)
    _ensure_model(engine, name)
    with session_scope(engine) as session:
        model = session.scalars(select(ModelRow).where(ModelRow.name == name).with_for_update()).one()
        model.latest_version += 1
        row = ModelVersionRow(
            model=name, version=model.latest_version, sha256=sha, bytes=len(converted.onnx), key=key,
            flavor=converted.flavor, signature=converted.signature, metrics=dict(metrics or {}),
            params={k: str(v) for k, v in (params or {}).items()},
            lineage={**(lineage or {}), "datasets": sources, "site": site},
            card=card,
            classification=strictest["classification"] if strictest else "internal",
            jurisdiction=strictest["jurisdiction"] if strictest else workspace.site(site).jurisdiction,
            home_site=site, status="active", description=description, tags=dict(tags or {}),
        )  # fmt: skip
        session.add(row)
        session.flush()
        session.add(ModelReplicaRow(version_id=row.id, site=site))
        version = row.version
    audit.record(action="model.register", subject=f"{name}/{version}", sites=[site], outcome="done",
        reason=f"{converted.flavor} -> ONNX, {len(converted.onnx)} bytes", details={"sha256": sha})  # fmt: skip
    return get_version(engine, f"{name}/{version}")


def _pointer_key(pointer: Any, name: str) -> str:
    """The key of a drift reference pointer a caller gave, refused unless it is one this module writes."""
    key = pointer.get("key") if isinstance(pointer, dict) else None
    sha = pointer.get("sha256") if isinstance(pointer, dict) else None
    if (
        not isinstance(sha, str)
        or not re.fullmatch(r"[0-9a-f]{64}", sha)
        or key != f"models/{name}/{sha}.drift-reference.json"
        or not isinstance(pointer.get("bytes"), int)
    ):
        raise SpecError(
            f"card['drift_reference'] must be {{key, sha256, bytes}} of a stored reference, not {pointer!r}"
        )
    return key


# -- aliases and promotion ---------------------------------------------------------------------------------------


def set_alias(
    workspace: Workspace, engine: Engine, name: str, alias: str, version: int | None, *, reason: str = ""
) -> int | None:
    """Point ``alias`` at ``version`` (None removes it); returns the version it pointed to before."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,62}", alias) or re.fullmatch(r"v[0-9]+", alias):
        raise SpecError(f"alias {alias!r}: lowercase letters, digits and '-', starting with a letter, not vN")
    if version is not None:
        target = get_version(engine, f"{name}/{version}")
        if target.status != "active":
            raise Conflict(f"{target.ref} is {target.status}; only active versions take aliases")
    with session_scope(engine) as session:
        row = session.get(ModelAliasRow, (name, alias))
        previous = row.version if row is not None else None
        if version is None and row is not None:
            session.delete(row)
        elif version is not None and row is None:
            session.add(ModelAliasRow(model=name, alias=alias, version=version))
        elif version is not None and row is not None:
            row.version, row.updated_at = version, utcnow()
        session.add(
            ModelAliasEventRow(model=name, alias=alias, version=version, previous=previous, reason=reason)
        )
    AuditLog(engine, workspace.state_dir).record(action="model.alias", subject=f"{name}@{alias}", outcome="done",
        reason=reason or f"{previous} -> {version}", details={"version": version, "previous": previous})  # fmt: skip
    return previous


@dataclass(frozen=True)
class Promotion:
    model: str
    version: int
    alias: str
    passed: bool
    clauses: list[ClauseResult]
    previous: int | None

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "clauses": [c.as_json() for c in self.clauses]}


def _gates(workspace: Workspace, engine: Engine, version: VersionView, alias: str) -> list[str]:
    """The gate of ``alias``: archipel.yaml's ``models:``, else the pipeline spec of the run that made it."""
    spec = workspace.spec.models.get(version.model)
    if spec is not None and alias in spec.gates:
        return spec.gates[alias]
    run_id = version.lineage.get("run_id")
    if run_id:
        from archipel.db.orm import RunRow

        with session_scope(engine) as session:
            run = session.get(RunRow, run_id)
            declared = (run.spec.get("models", {}) if run is not None else {}).get(version.model, {})
        return list(declared.get("gates", {}).get(alias, []))
    return []


def promote(
    workspace: Workspace,
    engine: Engine,
    name: str,
    version: int,
    *,
    to: str = "production",
    gates: list[str] | None = None,
) -> Promotion:
    """Move ``to`` to ``version`` if every gate clause holds (from ``archipel.yaml``'s ``models:``, or given);
    refused with :class:`PolicyViolation` naming the failing clauses. Both outcomes are audited."""
    candidate = get_version(engine, f"{name}/{version}")
    clauses = gates if gates is not None else _gates(workspace, engine, candidate, to)
    model = get_model(engine, name)
    by_number = {v.version: v for v in model.versions}
    aliases = {a: by_number[v].metrics for a, v in model.aliases.items()}
    results = evaluate_gate(clauses, candidate.metrics, aliases)
    failed = [r for r in results if not r.passed]
    audit = AuditLog(engine, workspace.state_dir)
    if failed:
        audit.record(action="model.promote", subject=f"{candidate.ref}@{to}", outcome="refused",
            reason="; ".join(r.detail for r in failed), rule=f"gate:{name}@{to}",
            details={"clauses": [r.as_json() for r in results]})  # fmt: skip
        raise PolicyViolation(
            f"promotion of {candidate.ref} to {to} refused by the gate: "
            + "; ".join(f"{r.clause} ({r.detail})" for r in failed),
            rule=f"gate:{name}@{to}",
            reason=failed[0].clause,
        )
    previous = set_alias(
        workspace,
        engine,
        name,
        to,
        version,
        reason="promoted: " + ("; ".join(r.detail for r in results) or "no gate"),
    )
    audit.record(action="model.promote", subject=f"{candidate.ref}@{to}", outcome="allowed",
        reason="every gate clause holds" if results else "no gate declared", rule=f"gate:{name}@{to}",
        details={"clauses": [r.as_json() for r in results], "previous": previous})  # fmt: skip
    return Promotion(name, version, to, True, results, previous)


def rollback(
    workspace: Workspace, engine: Engine, name: str, alias: str = "production"
) -> tuple[int | None, int]:
    """Point ``alias`` back at the version it pointed to before its last move; (from, to)."""
    with session_scope(engine) as session:
        last = session.scalars(
            select(ModelAliasEventRow)
            .where(ModelAliasEventRow.model == name, ModelAliasEventRow.alias == alias)
            .order_by(ModelAliasEventRow.id.desc())
        ).first()
        if last is None or last.previous is None:
            raise Conflict(f"{name}@{alias} has no earlier version to roll back to")
        current, target = last.version, last.previous
    set_alias(workspace, engine, name, alias, target, reason=f"rollback from {current}")
    return current, target


# -- replicas and predictions ------------------------------------------------------------------------------------


def replicate_model(workspace: Workspace, engine: Engine, ref: str, to_site: str) -> tuple[VersionView, int]:
    """Copy a version to ``to_site`` if its training data allows derived models there; (version, bytes moved)."""
    version = get_version(engine, ref)
    workspace.site(to_site)
    if to_site in version.replicas:
        return version, 0
    source = version.home_site if version.home_site in version.replicas else version.replicas[0]
    moved = move_object(workspace, engine, action="derive_export", subjects=version.subjects(),
        what=f"model {version.ref}", key=version.key, sha256=version.sha256, size=version.bytes,
        src_site=source, dst_site=to_site, run_id=None, tags={"model": version.model})  # fmt: skip
    if (pointer := version.card.get("drift_reference")) is not None:
        moved += move_object(workspace, engine, action="derive_export", subjects=version.subjects(),
            what=f"drift reference of model {version.ref}", key=pointer["key"], sha256=pointer["sha256"],
            size=pointer["bytes"], src_site=source, dst_site=to_site, run_id=None,
            tags={"model": version.model})  # fmt: skip
    with session_scope(engine) as session:
        row = session.scalars(
            select(ModelVersionRow).where(
                ModelVersionRow.model == version.model, ModelVersionRow.version == version.version
            )
        ).one()
        session.add(ModelReplicaRow(version_id=row.id, site=to_site))
    return get_version(engine, version.ref), moved


def _replica_bytes(
    workspace: Workspace, version: VersionView, site: str | None, key: str, sha256: str, what: str
) -> bytes:
    """``key`` from ``site`` (default: the version's home, else any replica), checked against ``sha256``."""
    sites = [site] if site else [version.home_site, *version.replicas]
    for name in dict.fromkeys(sites):
        if name not in version.replicas:
            continue
        data = workspace.storage(name).get(key)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"{what} at {name} does not match its sha256")
        return data
    raise NotFound(
        f"{version.ref} has no replica at {site or 'any site'} (replicas: {', '.join(version.replicas)})"
    )


def onnx_bytes(workspace: Workspace, version: VersionView, site: str | None = None) -> bytes:
    """The version's ONNX from ``site`` (default: its home, else any replica), checked against its sha256."""
    return _replica_bytes(workspace, version, site, version.key, version.sha256, version.ref)


def drift_reference(workspace: Workspace, version: VersionView, site: str | None = None) -> dict[str, Any]:
    """The version's drift reference (:func:`archipel.monitoring.drift.reference_profile`) from ``site``
    (default: its home, else any replica), checked against the sha256 its card records. :class:`NotFound` when
    the version has none (registered without evaluation data) or no replica at ``site``."""
    pointer = version.card.get("drift_reference")
    if pointer is None:
        raise NotFound(
            f"{version.ref} has no drift reference: it was registered without evaluation data (eval_data)"
        )
    data = _replica_bytes(
        workspace, version, site, pointer["key"], pointer["sha256"], f"the drift reference of {version.ref}"
    )
    return dict(json.loads(data))


def predict(
    workspace: Workspace, engine: Engine, ref: str, rows: Any, *, site: str | None = None
) -> dict[str, Any]:
    """ONNX Runtime's outputs for ``rows`` (a list of lists, or of dicts keyed by feature name)."""
    import numpy as np

    from archipel.registry.convert import run_onnx

    version = get_version(engine, ref)
    features = version.signature.get("feature_names")
    if rows and isinstance(rows[0], dict):
        if not features:
            raise SpecError(f"{version.ref} has no feature names; give rows as lists of numbers")
        missing = sorted(set(features) - set(rows[0]))
        if missing:
            raise SpecError(f"rows lack features {', '.join(missing)}")
        rows = [[row[f] for f in features] for row in rows]
    data = np.asarray(rows, dtype=np.float32)
    width = version.signature["inputs"][0]["shape"][-1]
    if data.ndim != 2 or (width is not None and data.shape[1] != width):
        raise SpecError(f"{version.ref} takes rows of {width} numbers, got shape {data.shape}")
    outputs = run_onnx(onnx_bytes(workspace, version, site), data)
    return {"model": version.ref, "outputs": {k: v.tolist() for k, v in outputs.items()}}


# -- MLflow habits: tags, descriptions, archiving, deleting ---------------------------------------------------


def update_version(
    workspace: Workspace,
    engine: Engine,
    ref: str,
    *,
    status: str | None = None,
    description: str | None = None,
    tags: dict[str, str] | None = None,
) -> VersionView:
    """Archive or reactivate a version, set its description, merge tags (an empty value removes a tag)."""
    version = get_version(engine, ref)
    if status not in (None, "active", "archived"):
        raise SpecError(f"status {status!r}: active or archived")
    if status == "archived" and version.aliases:
        raise Conflict(
            f"{version.ref} is {', '.join(version.aliases)}; move those aliases before archiving it"
        )
    with session_scope(engine) as session:
        row = session.scalars(
            select(ModelVersionRow).where(
                ModelVersionRow.model == version.model, ModelVersionRow.version == version.version
            )
        ).one()
        if status is not None:
            row.status = status
        if description is not None:
            row.description = description
        if tags:
            merged = {**row.tags, **tags}
            row.tags = {k: v for k, v in merged.items() if v != ""}
    changes = {"status": status, "description": description, "tags": tags}
    AuditLog(engine, workspace.state_dir).record(
        action="model.update",
        subject=version.ref,
        outcome="done",
        reason=", ".join(f"{k}={v}" for k, v in changes.items() if v is not None),
    )
    return get_version(engine, version.ref)


def update_model(
    engine: Engine, name: str, *, description: str | None = None, tags: dict[str, str] | None = None
) -> ModelView:
    with session_scope(engine) as session:
        row = session.get(ModelRow, name)
        if row is None:
            raise NotFound(f"no model {name!r}")
        if description is not None:
            row.description = description
        if tags:
            merged = {**row.tags, **tags}
            row.tags = {k: v for k, v in merged.items() if v != ""}
    return get_model(engine, name)


def delete_version(workspace: Workspace, engine: Engine, ref: str) -> VersionView:
    """Delete an archived version: its rows, its ONNX and drift reference at every site holding them. Its number
    is never reused."""
    version = get_version(engine, ref)
    if version.status != "archived":
        raise Conflict(f"archive {version.ref} before deleting it (archipel models archive {version.ref})")
    others = [v for v in get_model(engine, version.model).versions if v.version != version.version]
    pointer = version.card.get("drift_reference")
    for key in [version.key, *([pointer["key"]] if pointer else [])]:
        for site in version.replicas:
            if any(
                site in v.replicas and key in (v.key, v.card.get("drift_reference", {}).get("key"))
                for v in others
            ):
                continue  # content-addressed: another version's copy at that site is the same file
            with contextlib.suppress(NotFound):
                workspace.storage(site).delete(key)
    with session_scope(engine) as session:
        row = session.scalars(
            select(ModelVersionRow).where(
                ModelVersionRow.model == version.model, ModelVersionRow.version == version.version
            )
        ).one()
        session.delete(row)
    AuditLog(engine, workspace.state_dir).record(action="model.delete", subject=version.ref, sites=version.replicas,
        outcome="done", reason="deleted an archived version")  # fmt: skip
    return version


# -- MLflow interop ------------------------------------------------------------------------------------------


def import_mlflow(
    workspace: Workspace,
    engine: Engine,
    path: Path,
    name: str,
    *,
    site: str,
    datasets: list[str] | None = None,
    description: str = "",
) -> VersionView:
    """An MLflow model directory (sklearn or onnx flavor) as the next version of ``name``. A pickled model is
    converted in a resource-limited subprocess with an allow-listing unpickler; this process unpickles nothing.
    The ONNX is checked against the source model's outputs on the sample (sklearn), or run on it (onnx)."""
    import numpy as np

    from archipel.registry.convert import Converted, compare, run_onnx, signature_of
    from archipel.registry.mlflow_io import read_mlflow_model

    imported = read_mlflow_model(Path(path))
    check: dict[str, Any] = {"rows": 0, "outputs": []}
    if imported.sample_input is not None:
        sample = np.asarray(imported.sample_input, dtype=np.float32)
        outputs = run_onnx(imported.onnx, sample)
        check = {"rows": len(sample), "outputs": sorted(outputs)}
        if imported.reference is not None:
            check = {**compare(imported.reference, outputs), "rows": len(sample)}
    extra = {"task": imported.task, "classes": imported.classes} if imported.task else {}
    converted = Converted(
        imported.onnx,
        f"mlflow-{imported.flavor}",
        signature_of(imported.onnx, imported.feature_names, **extra),
        check,
    )
    source = {
        k: v
        for k, v in imported.source.items()
        if k in ("run_id", "model_uuid", "utc_time_created", "mlflow_version")
    }
    return register_version(workspace, engine, name, converted, site=site, datasets=datasets or [],
        lineage={"mlflow": source, "estimator": imported.estimator}, description=description)  # fmt: skip


OUTSIDE = Place("a folder outside every site", provider="unknown", jurisdiction="unknown")
"""Where an export goes unless its caller says which site's machine the folder is on."""


def export_mlflow(
    workspace: Workspace, engine: Engine, ref: str, dest: Path, *, at: str | None = None
) -> Path:
    """A version as an MLflow model directory with the onnx flavor (its lineage and metrics as metadata).

    The folder leaves archipel's sites, so the version's training data must let derived models go there
    (``derive_export``): to a folder at site ``at`` (a machine of that site) when given, else anywhere: data
    under a residency rule is refused until ``at`` names a site the rule allows. Audited either way."""
    from archipel.registry.mlflow_io import write_mlflow_model

    version = get_version(engine, ref)
    audit = AuditLog(engine, workspace.state_dir)
    hint = "" if at else "; if the folder is on a machine of an allowed site, say which with --at SITE"
    require(workspace, audit, "derive_export", version.subjects(), Place.of(at, workspace.site(at)) if at else OUTSIDE,
            {"export": str(dest)}, hint)  # fmt: skip
    metadata = {
        "archipel_model": version.ref,
        "sha256": version.sha256,
        "metrics": {k: float(v) for k, v in version.metrics.items()},
        "datasets": [d["ref"] for d in version.lineage.get("datasets", [])],
        "run_id": version.lineage.get("run_id"),
        "feature_names": version.signature.get("feature_names"),
    }
    written = write_mlflow_model(Path(dest), onnx=onnx_bytes(workspace, version), metadata=metadata)
    audit.record(action="model.export", subject=version.ref, outcome="done", sites=[at] if at else [],
                 reason=f"written as an MLflow model to {written}", details={"sha256": version.sha256})  # fmt: skip
    return written
