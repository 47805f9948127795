"""`archipel demo` as a user runs it: a real process; its summary is cross-checked against fresh queries."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from archipel.cli.demo import DEMO_REQUEST, STEPS
from archipel.db import connect, session_scope
from archipel.db.orm import SiteRow
from archipel.services.offers import find_offers
from archipel.workspace import load_workspace
from tests.demo_run import DemoRun


@dataclass(frozen=True)
class Demo:
    """The session's ``archipel demo --fast --keep-running`` (tests/demo_run.py): output, summary and workspace."""

    stdout: str
    summary: dict[str, Any]
    ws: Any
    engine: Any

    def step(self, key: str) -> dict[str, Any]:
        return self.summary["steps"][key]


@pytest.fixture(scope="module")
def demo(demo_run: DemoRun) -> Iterator[Demo]:
    ws = load_workspace(demo_run.root)
    engine = connect(ws.db_url)
    yield Demo(demo_run.stdout, demo_run.summary, ws, engine)
    engine.dispose()


def test_every_step_is_shown_with_its_figure_and_every_check_held(demo: Demo) -> None:
    titles = [title for _, title, _ in STEPS]
    for number, title in enumerate(titles, start=1):
        assert f"{number}. {title}" in demo.stdout
    assert len(titles) == 8 and demo.summary["ok"] is True and demo.summary["fast"] is True
    assert demo.summary["checks"] and all(demo.summary["checks"].values())
    assert set(demo.summary["seconds_by_step"]) == set(demo.summary["steps"]) == {key for key, _, _ in STEPS}
    assert f"All {len(demo.summary['checks'])} checks held" in demo.stdout


def test_the_sites_and_prices_are_the_stores_and_the_catalogs(demo: Demo) -> None:
    sites, ws, engine = demo.step("sites"), demo.ws, demo.engine
    assert sites["count"] == 3 and sites["jurisdictions"] == ["EU", "US"]
    with session_scope(engine) as session:
        health = {row.name: row.health for row in session.query(SiteRow)}
    assert health == sites["health"] == {name: "healthy" for name in ws.spec.sites}

    offers = sites["offers"]
    rows = find_offers(ws, DEMO_REQUEST)
    assert offers["matching"] == len(rows)
    assert offers["cheapest"]["site"] == rows[0].site
    assert offers["cheapest"]["hourly_usd"] == rows[0].hourly
    cheapest_by_site: dict[str, float] = {}
    for row in rows:
        cheapest_by_site.setdefault(row.site, row.hourly)
    assert offers["cheapest_by_site"] == cheapest_by_site
    # the printed sentence carries the computed figures
    assert f"${rows[0].hourly:.4f}/h" in demo.stdout
    assert rows[0].offer.instance_type in demo.stdout


def test_the_data_step_matches_the_ledger_the_catalog_and_the_audit_log(demo: Demo) -> None:
    from archipel.cost.ledger import entries
    from archipel.policy.audit import AuditLog
    from archipel.services.data import get_dataset

    data, ws, engine = demo.step("data"), demo.ws, demo.engine

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
    assert [e.sites for e in refused] == [("aws-us-east-1",), ("gcp-europe-west4",)]
    assert data["refused_us"]["rule"] == "default-personal-data-residency" and data["refused_us"]["untouched"]
    us = get_dataset(engine, "patients-us").latest
    assert set(us.replicas) == {"aws-us-east-1"} and (eu.rows, us.rows) == (
        341,
        228,
    )  # 569 tumours, split 60/40
    assert "Refused patients-eu → aws-us-east-1 by rule default-personal-data-residency" in demo.stdout


def test_planning_again_gives_the_same_plan_for_the_same_reasons(demo: Demo) -> None:
    from archipel.cli.demo_plan import DEMO_PIPELINE
    from archipel.services.plan import make_plan

    plan, ws, engine = demo.step("plan"), demo.ws, demo.engine
    again = make_plan(ws, engine, DEMO_PIPELINE)
    assert again.fingerprint == plan["fingerprint"]
    assert round(again.plan.total_usd, 6) == plan["total_usd"]
    assert {p.step: p.chosen.site for p in again.plan.placements} == {
        k: v["site"] for k, v in plan["placements"].items()
    }
    assert {(r["step"], r["site"], r["rule"]) for r in plan["refused"]} == {
        (step, "aws-us-east-1", "default-personal-data-residency") for step in ("prepare", "train")
    }


def test_the_run_is_the_one_the_store_the_ledger_and_the_storage_know(demo: Demo) -> None:
    from archipel.cost.ledger import entries
    from archipel.services.runs import get_run

    summary_run, ws, engine = demo.step("run"), demo.ws, demo.engine
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


def test_the_model_as_the_registry_and_the_audit_log_know_it(demo: Demo) -> None:
    from archipel.policy.audit import AuditLog
    from archipel.services.models import get_version, onnx_bytes

    summary_run, summary_models, ws, engine = demo.step("run"), demo.step("models"), demo.ws, demo.engine
    version = get_version(
        engine, f"malignancy/{summary_models['version']}"
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


def test_serving_failed_no_request_served_none_abroad_and_is_in_the_ledger(demo: Demo) -> None:
    """No failed request while a site died, none answered outside the EU, the US origin refused; the killed site and
    the ejection are in the audit log, the replicas' hours in the ledger."""
    from archipel.cost.ledger import entries
    from archipel.policy.audit import AuditLog

    serving, ws, engine = demo.step("serving"), demo.ws, demo.engine
    assert serving["failed"] == 0 and serving["requests"] == sum(serving["served_by_site"].values()) > 0
    assert set(serving["served_by_site"]) <= {"onprem-frankfurt", "gcp-europe-west4"}
    assert serving["served_by_site"]["onprem-frankfurt"] > serving["served_before_kill"]["onprem-frankfurt"]
    assert serving["us_origin_status"] == 503 and 0 < serving["ejected_after_ms"] < 5000
    log = AuditLog(engine, ws.state_dir)
    assert [e.subject for e in log.entries(action="chaos.kill_site")] == [serving["killed_site"]]
    assert any(e.sites == (serving["killed_site"],) for e in log.entries(action="gateway.unhealthy"))
    with session_scope(engine) as session:
        hours = [e for e in entries(session, kind="serving") if e.deployment_id == "malignancy"]
    assert set(serving["sites"]) <= {e.site for e in hours} and all(e.amount_usd > 0 for e in hours)
    assert (
        f"{serving['requests']} EU requests through the gateway" in demo.stdout and "0 failed" in demo.stdout
    )


def test_drift_reports_the_alert_the_loop_and_the_new_version_agree(demo: Demo) -> None:
    from archipel.policy.audit import AuditLog
    from archipel.services.models import get_version
    from archipel.services.monitoring import list_alerts, monitor_status

    monitoring, ws, engine = demo.step("monitoring"), demo.ws, demo.engine
    log = AuditLog(engine, ws.state_dir)
    stored = {r["site"]: r for r in monitor_status(engine, "malignancy")}
    for site, figures in monitoring["reports"].items():
        assert (stored[site]["id"], stored[site]["verdict"], stored[site]["rows"], stored[site]["drifted"]) == (
            figures["id"], figures["verdict"], figures["rows"], figures["drifted"])  # fmt: skip
    assert (
        stored["onprem-frankfurt"]["drifted"] == ["mean_texture"]
        and stored["gcp-europe-west4"]["verdict"] == "ok"
    )
    assert [(a["kind"], a["site"]) for a in list_alerts(engine, "malignancy")] == [
        ("drift", "onprem-frankfurt")
    ]
    loop = monitoring["loop"]
    assert loop["stage"] == "rolled-out" and monitoring["version_after"] == loop["version"] == 2
    retrained = get_version(engine, f"malignancy/{loop['version']}")
    assert retrained.lineage["run_id"] == loop["run_id"] and retrained.home_site != "aws-us-east-1"
    assert get_version(engine, "malignancy@production").version == loop["version"]
    steps = ("monitor.", "trigger.", "model.promote", "deployment.")
    trail = [e.action for e in log.entries() if e.action.startswith(steps)]
    assert trail[-9:-1] == ["monitor.drift", "monitor.drift", "monitor.alert", "trigger.fire", "model.promote",
                            "deployment.deploy", "trigger.rolled-out", "deployment.down"], trail  # fmt: skip
    assert trail[-1] == "deployment.deploy"  # --keep-running served it again


def test_the_ledger_step_is_the_ledger_and_the_audit_log_verifies(demo: Demo) -> None:
    from archipel.cost.ledger import entries
    from archipel.policy.audit import AuditLog

    ledger, ws, engine = demo.step("ledger"), demo.ws, demo.engine
    with session_scope(engine) as session:
        every = entries(session)
    # --keep-running came after the ledger step: compare with the entries the step could see
    seen = sorted(every, key=lambda e: e.at)[: ledger["entries"]]
    by_site: dict[str, float] = {}
    by_provider: dict[str, float] = {}
    for e in seen:
        by_site[e.site] = by_site.get(e.site, 0.0) + e.amount_usd
        provider = ws.site(e.site).provider
        by_provider[provider] = by_provider.get(provider, 0.0) + e.amount_usd
    assert ledger["by_site"] == pytest.approx(by_site, abs=2e-6) and len(by_site) == 3
    assert ledger["by_provider"] == pytest.approx(by_provider, abs=2e-6)
    assert ledger["total_usd"] == pytest.approx(sum(e.amount_usd for e in seen), abs=2e-6)
    assert ledger["total_usd"] > 0
    report = AuditLog(engine, ws.state_dir).verify()
    assert report.ok and ledger["audit"]["ok"] and report.entries >= ledger["audit"]["entries"] > 0
    assert f"${ledger['total_usd']:.6f} in {ledger['entries']} ledger entries" in demo.stdout
    assert "Audit log verified" in demo.stdout


def test_keep_running_leaves_the_model_served_behind_a_gateway(demo: Demo) -> None:
    import httpx

    kept = demo.summary["kept_running"]
    token = Path(kept["token_file"]).read_text().strip()
    assert token not in demo.stdout and oct(Path(kept["token_file"]).stat().st_mode & 0o777) == "0o600"
    from archipel.services.models import get_version

    names = get_version(demo.engine, "malignancy@production").signature["feature_names"]
    body = {
        "inputs": [
            {"name": "input", "shape": [1, len(names)], "datatype": "FP32", "data": [0.0] * len(names)}
        ]
    }
    eu = {"Authorization": f"Bearer {token}", "X-Archipel-Origin": "EU"}
    answer = httpx.post(f"{kept['url']}/v2/models/malignancy/infer", json=body, headers=eu, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-archipel-site"] in ("onprem-frankfurt", "gcp-europe-west4")
    assert httpx.post(f"{kept['url']}/v2/models/malignancy/infer", json=body, timeout=10).status_code == 401
    # the control plane's API (and dashboard) too, read with the same token
    runs = httpx.get(
        f"{kept['dashboard_url']}/api/v1/runs", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert runs.status_code == 200 and {r["id"] for r in runs.json()} >= {demo.step("run")["run_id"]}
    assert httpx.get(f"{kept['dashboard_url']}/api/v1/runs", timeout=10).status_code == 401
