"""Encryption at rest where a policy asks for it: sealed at each site with that site's key, identity unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from archipel.db import connect
from archipel.errors import PolicyViolation, SpecError
from archipel.services.data import add_dataset, get_dataset, read_dataset, replicate_dataset
from archipel.workspace import load_workspace

ROWS = "patient_id,age\n" + "".join(f"eu-{i:05d},{20 + i % 70}\n" for i in range(500))


@pytest.fixture
def sealed_ws(demo_workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = yaml.safe_load(demo_workspace.file.read_text())
    key_file = demo_workspace.root / "frankfurt.key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    monkeypatch.setenv("GCP_EU_DATA_KEY", os.urandom(32).hex())
    spec["sites"]["onprem-frankfurt"]["encryption"] = {"key_file": "frankfurt.key"}
    spec["sites"]["gcp-europe-west4"]["encryption"] = {"key_env": "GCP_EU_DATA_KEY"}
    spec["sites"]["onprem-paris"] = {
        **spec["sites"]["onprem-frankfurt"],
        "region": "paris",
        "storage": "file://sites/onprem-paris",
    }
    del spec["sites"]["onprem-paris"]["encryption"]
    spec["policies"] = [
        {
            "name": "sealed-phi",
            "match": {"classifications": ["phi"]},
            "store": {"jurisdictions": ["origin"]},
            "encrypt_at_rest": True,
        }
    ]
    demo_workspace.file.write_text(yaml.safe_dump(spec))
    ws = load_workspace(demo_workspace.root)
    engine = connect(ws.db_url)
    csv = tmp_path / "p.csv"
    csv.write_text(ROWS)
    yield ws, engine, csv
    engine.dispose()


def test_sealed_at_home_resealed_for_each_site_and_readable_with_its_key(sealed_ws) -> None:
    ws, engine, csv = sealed_ws
    version = add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi").version
    raw_home = ws.storage("onprem-frankfurt").get(version.key)
    assert raw_home.startswith(b"ARCHSEAL") and b"eu-00042" not in raw_home
    report = replicate_dataset(ws, engine, "patients", "gcp-europe-west4")
    assert report.sealed and report.bytes_moved > 0
    raw_gcp = ws.storage("gcp-europe-west4").get(version.key)
    assert raw_gcp.startswith(b"ARCHSEAL") and raw_gcp != raw_home  # another key, another nonce
    view = get_dataset(engine, "patients")
    assert view.latest.sha256 == version.sha256  # identity is the plaintext's
    assert all(view.latest.replicas.values()) and len(set(view.latest.replicas.values())) == 2
    table = read_dataset(ws, engine, "patients", at_site="gcp-europe-west4")
    assert table.num_rows == 500 and table.column("patient_id")[42].as_py() == "eu-00042"
    assert replicate_dataset(ws, engine, "patients", "gcp-europe-west4").bytes_moved == 0


def test_a_site_without_a_key_is_refused_before_any_byte(sealed_ws) -> None:
    ws, engine, csv = sealed_ws
    add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi")
    with pytest.raises(PolicyViolation, match="no data key") as info:
        replicate_dataset(ws, engine, "patients", "onprem-paris")
    assert info.value.rule == "sealed-phi"
    assert ws.storage("onprem-paris").list() == []


def test_a_missing_key_variable_is_a_clear_error_without_secrets(sealed_ws, monkeypatch) -> None:
    ws, engine, csv = sealed_ws
    add_dataset(ws, engine, "patients", csv, site="onprem-frankfurt", classification="phi")
    secret = os.environ["GCP_EU_DATA_KEY"]
    monkeypatch.delenv("GCP_EU_DATA_KEY")
    with pytest.raises(SpecError, match="GCP_EU_DATA_KEY") as info:
        replicate_dataset(ws, engine, "patients", "gcp-europe-west4")
    assert secret not in str(info.value)
    assert ws.storage("gcp-europe-west4").list() == []
