"""`archipel demo` as a user runs it: a real process; its summary is cross-checked against fresh queries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from archipel.cli.demo import DEMO_REQUEST
from archipel.db import connect, session_scope
from archipel.db.orm import SiteRow
from archipel.services.offers import find_offers
from archipel.workspace import load_workspace

# `make demo` installs archipel with the serve extra only: the demo process runs here with pandas unimportable
WITHOUT_PANDAS = """
import sys
class NoPandas:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
sys.meta_path.insert(0, NoPandas())
from archipel.cli.main import main
main(sys.argv[1:])
"""


def test_demo_runs_and_every_figure_checks_out(tmp_path: Path) -> None:
    ws_dir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_PANDAS, "demo", "--workspace", str(ws_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**__import__("os").environ, "COLUMNS": "160"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((ws_dir / ".archipel" / "demo-summary.json").read_text())
    assert summary["ok"] is True and all(summary["checks"].values())

    sites = summary["steps"]["sites"]
    assert sites["count"] == 3 and sites["jurisdictions"] == ["EU", "US"]
    ws = load_workspace(ws_dir)
    engine = connect(ws.db_url)
    with session_scope(engine) as session:
        health = {row.name: row.health for row in session.query(SiteRow)}
    assert health == sites["health"] == {name: "healthy" for name in ws.spec.sites}

    offers = summary["steps"]["offers"]
    rows = find_offers(ws, DEMO_REQUEST)
    assert offers["matching"] == len(rows)
    assert offers["cheapest"]["site"] == rows[0].site
    assert offers["cheapest"]["hourly_usd"] == rows[0].hourly
    cheapest_by_site: dict[str, float] = {}
    for row in rows:
        cheapest_by_site.setdefault(row.site, row.hourly)
    assert offers["cheapest_by_site"] == cheapest_by_site
    # the printed sentence carries the computed figures
    assert f"${rows[0].hourly:.4f}/h" in proc.stdout
    assert rows[0].offer.instance_type in proc.stdout
    engine.dispose()


def test_demo_data_step_matches_the_ledger_the_catalog_and_the_audit_log(tmp_path: Path) -> None:
    from archipel.cost.ledger import entries
    from archipel.policy.audit import AuditLog
    from archipel.services.data import get_dataset

    ws_dir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "archipel.cli", "demo", "--workspace", str(ws_dir)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((ws_dir / ".archipel" / "demo-summary.json").read_text())["steps"]["data"]
    ws = load_workspace(ws_dir)
    engine = connect(ws.db_url)

    eu = get_dataset(engine, "patients-eu").latest
    assert data["datasets"][eu.ref] == {"rows": eu.rows, "bytes": eu.bytes, "sha256": eu.sha256}
    assert set(eu.replicas) == {"onprem-frankfurt", "gcp-europe-west4"}
    assert data["replicated"]["bytes_moved"] == eu.bytes and data["second_copy_bytes_moved"] == 0
    # the refused copy left the US site without a byte of EU patient data
    assert data["refused"]["rule"] == "default-personal-data-residency"
    assert not [i.key for i in ws.storage("aws-us-east-1").list(f"datasets/{eu.dataset}/")]
    # every egress dollar in the summary is a ledger line
    with session_scope(engine) as session:
        egress = [  # the data step's: not a run's, not a model's
            e for e in entries(session, kind="egress") if e.run_id is None and "model" not in e.tags
        ]
    assert round(sum(e.amount_usd for e in egress), 8) == data["egress_usd"] > 0
    assert data["public_replica"]["egress_usd"] == round(egress[-1].amount_usd, 8)
    # the audit log verifies now as it did in the demo, and holds the refusal
    report = AuditLog(engine, ws.state_dir).verify()
    assert report.ok and report.entries >= data["audit"]["entries"]
    refused = [
        e for e in AuditLog(engine, ws.state_dir).entries(action="policy.replicate") if e.outcome == "refused"
    ]
    assert [e.sites for e in refused] == [("aws-us-east-1",)]
    assert "Refused patients-eu → aws-us-east-1 by rule default-personal-data-residency" in proc.stdout

    # the plan step: planning again now gives the same plan, for the same reasons
    from archipel.cli.demo_plan import DEMO_PIPELINE
    from archipel.services.plan import make_plan

    plan = json.loads((ws_dir / ".archipel" / "demo-summary.json").read_text())["steps"]["plan"]
    again = make_plan(ws, engine, DEMO_PIPELINE)
    assert again.fingerprint == plan["fingerprint"]
    assert round(again.plan.total_usd, 6) == plan["total_usd"]
    assert {p.step: p.chosen.site for p in again.plan.placements} == {
        k: v["site"] for k, v in plan["placements"].items()
    }
    assert {(r["step"], r["site"], r["rule"]) for r in plan["refused"]} == {
        (step, "aws-us-east-1", "default-personal-data-residency") for step in ("prepare", "train")
    }

    # the run step: the run as the metadata store, the ledger and the site's storage know it
    import hashlib

    from archipel.cost.ledger import entries
    from archipel.services.runs import get_run

    summary_run = json.loads((ws_dir / ".archipel" / "demo-summary.json").read_text())["steps"]["run"]
    view = get_run(engine, summary_run["run_id"])
    train = next(s for s in view.steps if s["step"] == "train")
    assert view.state == summary_run["state"] == "SUCCEEDED"
    assert {s["step"]: s["site"] for s in view.steps} == summary_run["sites"]
    assert train["recoveries"] == summary_run["recoveries"] == 1
    assert [a["exit_code"] for a in view.attempts if a["step"] == "train"] == [-9, 0]
    resumed = min(m["at_step"] for m in view.metrics if m["key"] == "train_accuracy" and m["attempt"] == 2)
    assert resumed == summary_run["resumed_at_step"] == summary_run["checkpoint_step"] > 0
    with session_scope(engine) as session:
        ledger = [e for e in entries(session) if e.run_id == view.id]
    assert round(sum(e.amount_usd for e in ledger if e.kind == "compute"), 9) == summary_run["compute_usd"]
    assert len([e for e in ledger if e.kind == "compute"]) == len(view.attempts)
    model = train["outputs"]["model"]
    data = ws.storage(model["site"]).get(model["key"])
    assert hashlib.sha256(data).hexdigest() == model["sha256"] == summary_run["model_sha256"]

    # the models step: the version, its alias, replicas and the refusal, as the registry and the audit log know them
    from archipel.policy.audit import AuditLog
    from archipel.services.models import get_version, onnx_bytes

    summary_models = json.loads((ws_dir / ".archipel" / "demo-summary.json").read_text())["steps"]["models"]
    version = get_version(
        engine, f"readmission/{summary_models['version']}"
    )  # (production moves on in step 8)
    assert version.version == summary_models["version"] == 1 and version.sha256 == summary_models["sha256"]
    assert version.lineage["run_id"] == summary_run["run_id"] == summary_models["run_id"]
    assert [d["ref"] for d in version.lineage["datasets"]] == summary_models["datasets"]
    assert version.replicas == sorted(summary_models["replicas"]) and "aws-us-east-1" not in version.replicas
    for site in version.replicas:  # every replica holds the very bytes
        assert hashlib.sha256(onnx_bytes(ws, version, site)).hexdigest() == version.sha256
    assert not list(ws.storage("aws-us-east-1").list("models/"))
    refusals = [
        e
        for e in AuditLog(engine, ws.state_dir).entries(action="policy.derive_export")
        if e.outcome == "refused" and e.sites == ("aws-us-east-1",)
    ]
    assert (
        refusals and refusals[-1].rule == summary_models["refused_rule"] == "default-personal-data-residency"
    )
    assert version.metrics == summary_models["metrics"]

    # the serving step: no failed request while a site died, none answered outside the EU, the US origin refused;
    # the killed site and the ejection are in the audit log, the replicas' hours in the ledger
    from archipel.services.deployments import get_deployment

    serving = json.loads((ws_dir / ".archipel" / "demo-summary.json").read_text())["steps"]["serving"]
    assert serving["failed"] == 0 and serving["requests"] == sum(serving["served_by_site"].values()) > 0
    assert set(serving["served_by_site"]) <= {"onprem-frankfurt", "gcp-europe-west4"}
    assert serving["served_by_site"]["onprem-frankfurt"] > serving["served_before_kill"]["onprem-frankfurt"]
    assert serving["us_origin_status"] == 503 and 0 < serving["ejected_after_ms"] < 5000
    log = AuditLog(engine, ws.state_dir)
    assert [e.subject for e in log.entries(action="chaos.kill_site")] == [serving["killed_site"]]
    assert any(e.sites == (serving["killed_site"],) for e in log.entries(action="gateway.unhealthy"))
    assert get_deployment(engine, "readmission").state == "down"
    with session_scope(engine) as session:
        hours = [e for e in entries(session, kind="serving") if e.deployment_id == "readmission"]
    assert set(serving["sites"]) <= {e.site for e in hours} and all(e.amount_usd > 0 for e in hours)
    assert (
        f"{serving['requests']} EU requests through the gateway" in proc.stdout and "0 failed" in proc.stdout
    )

    # the monitoring step: the stored reports, the alert, the loop's audit trail and the new version agree
    from archipel.services.monitoring import list_alerts, monitor_status

    monitoring = json.loads((ws_dir / ".archipel" / "demo-summary.json").read_text())["steps"]["monitoring"]
    stored = {r["site"]: r for r in monitor_status(engine, "readmission")}
    for site, figures in monitoring["reports"].items():
        assert (stored[site]["id"], stored[site]["verdict"], stored[site]["rows"], stored[site]["drifted"]) == (
            figures["id"], figures["verdict"], figures["rows"], figures["drifted"])  # fmt: skip
    assert (
        stored["onprem-frankfurt"]["drifted"] == ["glucose"] and stored["gcp-europe-west4"]["verdict"] == "ok"
    )
    assert [(a["kind"], a["site"]) for a in list_alerts(engine, "readmission")] == [
        ("drift", "onprem-frankfurt")
    ]
    loop = monitoring["loop"]
    assert loop["stage"] == "rolled-out" and monitoring["version_after"] == loop["version"] == 2
    retrained = get_version(engine, f"readmission/{loop['version']}")
    assert retrained.lineage["run_id"] == loop["run_id"] and retrained.home_site != "aws-us-east-1"
    assert get_version(engine, "readmission@production").version == loop["version"]
    steps = ("monitor.", "trigger.", "model.promote", "deployment.")
    trail = [e.action for e in log.entries() if e.action.startswith(steps)]
    assert trail[-8:] == ["monitor.drift", "monitor.drift", "monitor.alert", "trigger.fire", "model.promote",
                          "deployment.deploy", "trigger.rolled-out", "deployment.down"], trail  # fmt: skip
    assert log.verify().ok
    engine.dispose()
