"""`apply` shows a diff and syncs archipel.yaml into the metadata store; a second apply changes nothing."""

from __future__ import annotations

from sqlalchemy import select

from archipel.db import connect, session_scope
from archipel.db.orm import SiteRow
from archipel.services.apply import apply_plan, plan_apply, spec_hash
from archipel.workspace import load_workspace


def test_first_apply_adds_every_site_then_nothing(tmp_path, db_url, monkeypatch) -> None:
    from archipel.services.init import init_workspace

    monkeypatch.setenv("ARCHIPEL_DB_URL", db_url)
    ws = init_workspace(tmp_path / "ws", demo=True)
    engine = connect(ws.db_url)
    plan = plan_apply(ws, engine)
    assert plan.counts() == {"add": 3, "change": 0, "remove": 0}
    apply_plan(ws, engine, plan)
    again = plan_apply(ws, engine)
    assert again.empty and sorted(again.unchanged) == sorted(ws.spec.sites)
    with session_scope(engine) as session:
        rows = {r.name: r for r in session.scalars(select(SiteRow))}
    assert rows["gcp-europe-west4"].jurisdiction == "EU"
    assert rows["aws-us-east-1"].spec_hash == spec_hash(
        ws.spec.sites["aws-us-east-1"].model_dump(mode="json")
    )
    engine.dispose()


def test_change_and_remove_are_diffed_field_by_field(demo_workspace) -> None:
    text = demo_workspace.file.read_text()
    text = text.replace("capacity: {cpus: 4, memory: 16GiB}", "capacity: {cpus: 6, memory: 16GiB}")
    start = text.index("  aws-us-east-1:")
    end = text.index("  gcp-europe-west4:")
    demo_workspace.file.write_text(text[:start] + text[end:])
    ws = load_workspace(demo_workspace.root)
    engine = connect(ws.db_url)
    plan = plan_apply(ws, engine)
    by_site = {c.name: c for c in plan.changes}
    assert by_site["aws-us-east-1"].action == "remove"
    change = by_site["onprem-frankfurt"]
    assert change.action == "change"
    assert [(f.path, f.old, f.new) for f in change.fields] == [("capacity.cpus", 4.0, 6.0)]
    apply_plan(ws, engine, plan)
    with session_scope(engine) as session:
        names = set(session.scalars(select(SiteRow.name)))
    assert names == {"gcp-europe-west4", "onprem-frankfurt"}
    assert plan_apply(ws, engine).empty
    engine.dispose()


def test_spec_hash_ignores_key_order() -> None:
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})
