"""Datasets through the services a CLI or API calls: versions, reads, policy refusals, erasure, audit."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archipel.data.ingest import parse_ref
from archipel.db import connect
from archipel.errors import Conflict, NotFound, PolicyViolation, SpecError
from archipel.policy.audit import AuditLog
from archipel.services.data import (
    add_dataset,
    check_policy,
    erase_dataset,
    get_dataset,
    list_datasets,
    read_dataset,
)

ROWS = "id,age,label\n1,34,0\n2,51,1\n3,29,0\n"


@pytest.fixture
def env(demo_workspace, tmp_path: Path):
    engine = connect(demo_workspace.db_url)
    csv = tmp_path / "patients.csv"
    csv.write_text(ROWS)
    yield demo_workspace, engine, csv
    engine.dispose()


def _site_files(ws, site: str) -> list[str]:
    return [info.key for info in ws.storage(site).list("datasets/")]


def test_refs_parse_and_bad_ones_say_the_form() -> None:
    assert (parse_ref("patients").name, parse_ref("patients@v3").version) == ("patients", 3)
    for bad in ("Patients", "patients@3", "patients@v0", "../x", "a@vX"):
        with pytest.raises(SpecError, match="NAME@vN"):
            parse_ref(bad)


def test_add_creates_a_version_only_when_content_changes(env) -> None:
    ws, engine, csv = env
    first = add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi")
    assert first.created and first.version.ref == "patients@v1" and first.version.rows == 3
    assert [c["name"] for c in first.version.columns] == ["id", "age", "label"]
    assert _site_files(ws, "onprem-frankfurt") == [first.version.key]
    again = add_dataset(ws, engine, "patients", csv)
    assert not again.created and again.version.ref == "patients@v1"
    csv.write_text(ROWS + "4,61,1\n")
    second = add_dataset(ws, engine, "patients", csv)
    assert second.created and second.version.ref == "patients@v2" and second.version.rows == 4
    view = get_dataset(engine, "patients")
    assert (view.classification, view.jurisdiction, view.home_site) == ("phi", "EU", "onprem-frankfurt")
    assert [v.version for v in view.versions] == [1, 2] and view.latest.sha256 == second.version.sha256
    assert [d.name for d in list_datasets(engine)] == ["patients"]


def test_parquet_input_with_the_same_data_is_the_same_version(env, tmp_path: Path) -> None:
    ws, engine, csv = env
    first = add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi")
    table = pa.table({"id": [1, 2, 3], "age": [34, 51, 29], "label": [0, 1, 0]})
    pq.write_table(table, tmp_path / "same.parquet", compression="snappy")
    assert not add_dataset(ws, engine, "patients", tmp_path / "same.parquet").created
    assert first.version.sha256 == get_dataset(engine, "patients").latest.sha256


def test_a_new_version_cannot_change_what_the_data_is(env) -> None:
    ws, engine, csv = env
    add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi")
    with pytest.raises(Conflict, match="classification phi"):
        add_dataset(ws, engine, "patients", csv, classification="public")
    with pytest.raises(SpecError, match="needs --site and --classification"):
        add_dataset(ws, engine, "other", csv)
    with pytest.raises(SpecError, match="unknown classification"):
        add_dataset(ws, engine, "other", csv, site="onprem-frankfurt", classification="secret")
    with pytest.raises(NotFound, match="no site"):
        add_dataset(ws, engine, "other", csv, site="mars", classification="public")


def test_unreadable_input_names_the_file(env, tmp_path: Path) -> None:
    ws, engine, _ = env
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2,3,4\n")
    with pytest.raises(SpecError, match=r"bad\.csv"):
        add_dataset(ws, engine, "bad", bad, site="aws-us-east-1", classification="public")
    with pytest.raises(SpecError, match="unsupported format"):
        add_dataset(
            ws, engine, "bad", _touch(tmp_path / "x.json"), site="aws-us-east-1", classification="public"
        )
    assert _site_files(ws, "aws-us-east-1") == []


def _touch(path: Path) -> Path:
    path.write_text("{}")
    return path


def test_storing_where_the_policy_forbids_is_refused_before_any_byte(env) -> None:
    ws, engine, csv = env
    with pytest.raises(PolicyViolation) as info:
        add_dataset(
            ws, engine, "patients", csv, site="aws-us-east-1", classification="phi", jurisdiction="EU"
        )
    assert info.value.rule == "default-personal-data-residency"
    assert _site_files(ws, "aws-us-east-1") == []
    refused = AuditLog(engine, ws.state_dir).entries(action="policy.store")
    assert [e.outcome for e in refused] == ["refused"] and refused[0].sites == ("aws-us-east-1",)
    with pytest.raises(NotFound):
        get_dataset(engine, "patients")


def test_reading_returns_arrow_or_pandas_where_processing_is_allowed(env) -> None:
    ws, engine, csv = env
    add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi")
    table = read_dataset(ws, engine, "patients@v1")
    assert table.column("age").to_pylist() == [34, 51, 29]
    frame = read_dataset(ws, engine, "patients", at_site="gcp-europe-west4", as_pandas=True)
    assert list(frame["label"]) == [0, 1, 0]
    with pytest.raises(PolicyViolation, match="aws-us-east-1 is in US"):
        read_dataset(ws, engine, "patients", at_site="aws-us-east-1")


def test_policy_check_explains_without_acting(env) -> None:
    ws, engine, csv = env
    add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi")
    decision = check_policy(ws, engine, "patients", "aws-us-east-1", "replicate")
    assert not decision.allowed and decision.rule == "default-personal-data-residency"
    assert check_policy(ws, engine, "patients", "gcp-europe-west4", "replicate").allowed
    assert _site_files(ws, "aws-us-east-1") == _site_files(ws, "gcp-europe-west4") == []
    entry = AuditLog(engine, ws.state_dir).entries(action="policy.replicate")[0]
    assert entry.details["dry_run"] is True


def test_erase_removes_every_byte_and_keeps_the_fact(env) -> None:
    ws, engine, csv = env
    add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi")
    csv.write_text(ROWS + "4,61,1\n")
    add_dataset(ws, engine, "patients", csv)
    report = erase_dataset(ws, engine, "patients@v1")
    assert report.refs == ["patients@v1"] and len(report.deleted["onprem-frankfurt"]) == 1
    assert len(_site_files(ws, "onprem-frankfurt")) == 1  # v2 is still there
    with pytest.raises(NotFound, match="erased"):
        read_dataset(ws, engine, "patients@v1")
    erase_dataset(ws, engine, "patients")
    for site in ws.spec.sites:
        assert _site_files(ws, site) == []
    view = get_dataset(engine, "patients")
    assert all(v.erased_at is not None for v in view.versions) and view.latest is None
    log = AuditLog(engine, ws.state_dir)
    assert [e.subject for e in log.entries(action="data.erase")] == ["patients@v1", "patients"]
    assert log.verify().ok


def test_the_sdk_reads_like_user_code_would(env, monkeypatch: pytest.MonkeyPatch) -> None:
    import archipel

    ws, engine, csv = env
    add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi")
    monkeypatch.setenv("ARCHIPEL_SITE", "gcp-europe-west4")
    table = archipel.read_dataset("patients", workspace=ws.root)
    assert table.num_rows == 3
    monkeypatch.setenv("ARCHIPEL_SITE", "aws-us-east-1")
    with pytest.raises(PolicyViolation):
        archipel.read_dataset("patients@v1", workspace=ws.root)


def test_replication_is_policy_checked_verified_charged_and_idempotent(env) -> None:
    from archipel.cost.ledger import entries
    from archipel.db import session_scope
    from archipel.services.data import replicate_dataset

    ws, engine, csv = env
    eu = add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi").version
    with pytest.raises(PolicyViolation) as refused:
        replicate_dataset(ws, engine, "patients", "aws-us-east-1")
    assert refused.value.rule == "default-personal-data-residency"
    assert ws.storage("aws-us-east-1").list() == []  # not a byte, not a temp file
    audit = AuditLog(engine, ws.state_dir)
    (entry,) = [e for e in audit.entries(action="policy.replicate") if e.outcome == "refused"]
    assert entry.rule == "default-personal-data-residency" and entry.sites == ("aws-us-east-1",)

    first = replicate_dataset(ws, engine, "patients", "gcp-europe-west4")
    assert first.bytes_moved == eu.bytes and first.source == "onprem-frankfurt"
    assert ws.storage("gcp-europe-west4").get(eu.key) == ws.storage("onprem-frankfurt").get(eu.key)
    second = replicate_dataset(ws, engine, "patients", "gcp-europe-west4")
    assert second.bytes_moved == 0 and second.already_present

    # a public dataset leaving AWS for GCP pays AWS's internet egress, written to the ledger
    add_dataset(ws, engine, "codes", csv, site="aws-us-east-1", classification="public")
    public = replicate_dataset(ws, engine, "codes", "gcp-europe-west4")
    with session_scope(engine) as session:
        onprem, line = entries(session, kind="egress")
    assert onprem.site == "onprem-frankfurt" and onprem.amount_usd == 0  # own network: recorded, not charged
    assert line.site == "aws-us-east-1" and line.dest_site == "gcp-europe-west4"
    assert line.quantity == pytest.approx(public.bytes_moved / 1e9) and line.amount_usd == pytest.approx(
        public.egress_usd
    )
    assert line.unit_price_usd == ws.catalog.egress.rate("aws", "internet").price_per_gb

    # erasure reaches every replica
    erase_dataset(ws, engine, "patients")
    for site in ws.spec.sites:
        assert not [i.key for i in ws.storage(site).list("datasets/patients/")]
    assert audit.verify().ok
