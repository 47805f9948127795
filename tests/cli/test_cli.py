"""The CLI end to end, in-process through `main()` (exit codes, JSON output) and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import run


def test_init_demo_then_sites_ls_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    code, out, err = run(capsys, "init", "--demo", str(ws))
    assert code == 0, err
    assert (ws / "archipel.yaml").is_file() and (ws / "sites" / "onprem-frankfurt").is_dir()
    code, out, err = run(capsys, "-w", str(ws), "sites", "ls", "--json")
    assert code == 0, err
    sites = {s["name"]: s for s in json.loads(out)}
    assert set(sites) == {"aws-us-east-1", "gcp-europe-west4", "onprem-frankfurt"}
    assert {s["jurisdiction"] for s in sites.values()} == {"US", "EU"}
    assert all(s["applied"] and s["health"] == "unknown" for s in sites.values())
    code, _, err = run(capsys, "init", "--demo", str(ws))
    assert code == 4 and "exists already" in err  # Conflict


def test_sites_check_records_health(demo_workspace, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "-w", str(demo_workspace.root), "sites", "check", "--json", "--timeout", "20"
    )
    assert code == 0, err + out
    results = json.loads(out)
    assert [r["health"] for r in results] == ["healthy"] * 3
    assert all(r["storage"]["ok"] and r["compute"]["ok"] for r in results)
    code, out, _ = run(capsys, "-w", str(demo_workspace.root), "sites", "ls", "--json")
    assert {s["health"] for s in json.loads(out)} == {"healthy"}
    # no probe objects are left behind
    leftovers = [
        p for p in (demo_workspace.root / "sites").rglob("*") if p.is_file() and ".tmp" not in p.parts
    ]
    assert leftovers == []
    probe_jobs = list((demo_workspace.state_dir / "compute").glob("*/jobs/*"))
    assert probe_jobs == []  # probe jobs are forgotten once checked


def test_sites_check_reports_a_broken_site(demo_workspace, capsys: pytest.CaptureFixture[str]) -> None:
    storage = demo_workspace.root / "sites" / "aws-us-east-1"
    storage.rmdir()
    storage.write_text("not a directory")  # storage can no longer be written
    code, out, _ = run(capsys, "-w", str(demo_workspace.root), "sites", "check", "--json", "aws-us-east-1")
    assert code == 9
    [result] = json.loads(out)
    assert result["health"] == "degraded" and not result["storage"]["ok"] and result["compute"]["ok"]


def test_offers_are_sorted_and_fit_the_request(demo_workspace, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "-w",
        str(demo_workspace.root),
        "offers",
        "--cpus",
        "4",
        "--memory",
        "16GiB",
        "--json",
        "--limit",
        "500",
    )
    assert code == 0, err
    rows = json.loads(out)
    assert rows, "the demo workspace must have offers for 4 vCPU / 16 GiB"
    prices = [r["hourly_usd"] for r in rows]
    assert prices == sorted(prices)
    assert all(r["vcpus"] >= 4 and r["memory_gib"] >= 16 for r in rows)
    assert {r["site"] for r in rows} == {"aws-us-east-1", "gcp-europe-west4", "onprem-frankfurt"}
    assert all(r["source"] and r["as_of"] for r in rows)
    code, out, _ = run(
        capsys,
        "-w",
        str(demo_workspace.root),
        "offers",
        "--cpus",
        "4",
        "--memory",
        "16",
        "--spot",
        "--json",
        "--limit",
        "500",
    )
    spot = json.loads(out)
    assert spot and all(r["spot"] for r in spot) and "onprem-frankfurt" not in {r["site"] for r in spot}
    assert min(r["hourly_usd"] for r in spot) < min(
        r["hourly_usd"] for r in rows if r["provider"] != "onprem"
    )
    # more than any site's capacity: nothing fits
    code, out, _ = run(capsys, "-w", str(demo_workspace.root), "offers", "--cpus", "64", "--json")
    assert json.loads(out) == []


def test_offers_bad_arguments(demo_workspace, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-w", str(demo_workspace.root), "offers", "--accelerator", "A100:x")
    assert code == 2 and "NAME:COUNT" in err
    code, _, err = run(capsys, "-w", str(demo_workspace.root), "offers", "--memory", "lots")
    assert code == 2 and "--memory" in err


def test_apply_shows_diff_and_needs_consent(demo_workspace, capsys: pytest.CaptureFixture[str]) -> None:
    spec = demo_workspace.file
    spec.write_text(
        spec.read_text().replace("labels: {tier: datacenter}", "labels: {tier: datacenter, rack: b7}")
    )
    root = str(demo_workspace.root)
    code, out, err = run(capsys, "-w", root, "apply", "--dry-run")
    assert code == 0 and "labels.rack" in out and "1 to change" in out
    code, out, err = run(capsys, "-w", root, "apply")  # stdin is not a terminal under pytest
    assert code == 2 and "--yes" in err
    code, out, err = run(capsys, "-w", root, "apply", "--yes")
    assert code == 0 and "1 changed" in out
    code, out, _ = run(capsys, "-w", root, "apply", "--json")
    assert json.loads(out) == {"changes": [], "unchanged": sorted(json.loads(out)["unchanged"])}


def test_workspace_discovery_order(demo_workspace, tmp_path: Path, monkeypatch, capsys) -> None:
    nested = demo_workspace.root / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    code, out, _ = run(capsys, "sites", "ls", "--json")
    assert code == 0 and len(json.loads(out)) == 3  # found upward
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, "sites", "ls")
    assert code == 3 and "archipel init" in err  # NotFound
    monkeypatch.setenv("ARCHIPEL_WORKSPACE", str(demo_workspace.root))
    code, out, _ = run(capsys, "sites", "ls", "--json")
    assert code == 0 and len(json.loads(out)) == 3


def test_schema_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0 and json.loads(out)["title"] == "archipel.yaml"
    target = tmp_path / "s.json"
    code, _, _ = run(capsys, "schema", "-o", str(target))
    assert json.loads(target.read_text())["$defs"]["SiteSpec"]


def test_unknown_region_is_a_spec_error_with_line(demo_workspace, capsys) -> None:
    spec = demo_workspace.file
    spec.write_text(spec.read_text().replace("region: europe-west4", "region: europe-west99"))
    code, _, err = run(capsys, "-w", str(demo_workspace.root), "sites", "ls")
    assert code == 2 and "archipel.yaml:" in err and "europe-west99" in err and "known:" in err


def test_real_process_version_and_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "archipel.cli", "--version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and proc.stdout.startswith("archipel ")
