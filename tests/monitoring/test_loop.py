"""Monitoring where the samples are, and the closed loop, on a real workspace: a malignancy model trained by a
real run on EU patient data (phi), deployed at both EU sites with every request sampled; mean_texture shifted by
one standard deviation in the traffic of one site only, as the demo does. Drift jobs run at each site; only
aggregates reach the metadata store; the drifted site raises an alert whose trigger retrains at an allowed site,
passes the gate and rolls the new version out while traffic flows through a gateway without a failed request; an
impossible gate stops the next loop and says why."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from archipel.data.samples import MEAN_FEATURES, write_patients_csvs
from tests.serving.conftest import stop, wait_listening

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FRANKFURT, NETHERLANDS, US = "onprem-frankfurt", "gcp-europe-west4", "aws-us-east-1"
FEATURES = list(MEAN_FEATURES)  # what examples/train.py trains on
SHIFTED = "mean_texture"
CANARY = np.float32(1234.776543)  # a mean area no tumour has (they have one decimal): marks Frankfurt's rows
MIN_COUNT = 5
RETRAIN = """
name: retrain-malignancy
run: python train.py
inputs: [patients-eu]
outputs:
  model: {kind: artifact}
envs: {TRAIN_STEPS: "60"}
resources: {cpus: 1, memory: 1GiB}
estimate: 0.1h
retries: 0
"""
WORKSPACE_TAIL = """
models:
  malignancy:
    gates:
      production: ["accuracy >= {floor}"]
triggers:
  retrain-on-drift:
    deployment: malignancy
    on: [drift]
    pipeline: retrain/job.yaml
    cooldown_s: 0
"""


@dataclass
class Loop:
    ws: Any
    engine: Any
    rows: np.ndarray  # patients as the model takes them (float32, FEATURES order)
    reports: list[dict[str, Any]]
    outcome: Any
    served: dict[str, int]
    failed: int
    versions: tuple[int, int]


def _set_floor(root: Path, floor: float) -> Any:
    from archipel.workspace import load_workspace

    text = (root / "archipel.yaml").read_text()
    text = text.split("\nmodels:\n", 1)[0] + WORKSPACE_TAIL.format(floor=floor)
    (root / "archipel.yaml").write_text(text)
    return load_workspace(root)


def _post(url: str, rows: np.ndarray, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.reshape(-1).tolist()}]}  # fmt: skip
    return httpx.post(f"{url}/v2/models/malignancy/infer", json=body, headers=headers or {}, timeout=30)


def _wait_samples(ws: Any, site: str, prefix: str, rows: int) -> None:
    import pyarrow.parquet as pq

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        keys = [i.key for i in ws.storage(site).list(prefix) if i.key.endswith(".parquet")]
        if sum(pq.read_table(io.BytesIO(ws.storage(site).get(k))).num_rows for k in keys) >= rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"the samples at {site} never reached {rows} rows")


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    from archipel.db import connect
    from archipel.models.deployment import DeploymentSpec
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.data import add_dataset, read_dataset
    from archipel.services.deployments import deploy, down, get_deployment
    from archipel.services.init import init_workspace
    from archipel.services.monitoring import run_monitor
    from archipel.services.plan import load_plan_spec, make_plan
    from archipel.services.reconciler import Reconciler
    from archipel.services.runs import submit_run
    from archipel.services.tokens import create_token

    root = tmp_path_factory.mktemp("loop") / "ws"
    ws = init_workspace(root, demo=True)
    ws = _set_floor(root, 0.5)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    csv = write_patients_csvs(root.parent / "patients")["patients-eu"]  # 341 records; requests resample them
    add_dataset(ws, engine, "patients-eu", csv, site=FRANKFURT, classification="phi")
    job = root / "retrain"
    job.mkdir()
    (job / "train.py").write_text((EXAMPLES / "train.py").read_text())
    (job / "job.yaml").write_text(RETRAIN)
    run_id = submit_run(ws, engine, make_plan(ws, engine, load_plan_spec(job / "job.yaml")), workdir=job)
    reconciler = Reconciler(ws, engine)
    assert reconciler.drive(run_id, timeout_s=300) == "SUCCEEDED"
    reconciler.close()
    from archipel.services.models import promote

    promote(ws, engine, "malignancy", 1)
    spec = DeploymentSpec.model_validate({
        "name": "malignancy", "model": "malignancy@production", "sites": [FRANKFURT, NETHERLANDS],
        "sample_rate": 1.0, "monitoring": {"drift_share": 0.1, "min_rows": 300, "min_count_per_bin": MIN_COUNT},
    })  # fmt: skip
    view = deploy(ws, engine, spec)
    urls = {r["site"]: r["url"] for r in view.replicas}
    table = read_dataset(ws, engine, "patients-eu", at_site=FRANKFURT, as_pandas=True)
    rows = table[FEATURES].to_numpy(dtype=np.float32)
    rng = np.random.default_rng(5)
    shifted = rows[rng.integers(0, len(rows), 2400)].copy()
    shifted[:, FEATURES.index(SHIFTED)] += rows[:, FEATURES.index(SHIFTED)].std()
    shifted[:5, FEATURES.index("mean_area")] = CANARY
    plain = rows[rng.integers(0, len(rows), 2400)]
    for part in np.array_split(shifted, 6):  # 2400 rows: the sampler writes at 2000
        assert _post(urls[FRANKFURT], part).status_code == 200
    for part in np.array_split(plain, 6):
        assert _post(urls[NETHERLANDS], part).status_code == 200
    for site in (FRANKFURT, NETHERLANDS):
        _wait_samples(ws, site, f"samples/malignancy/1/{site}/", 2000)

    token = create_token(ws, engine, scope="infer", origins=["EU"])[0]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "archipel.cli", "--workspace", str(ws.root), "gateway", "--port", "0",
         "--health-interval-s", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = wait_listening(gateway)
    headers = {"Authorization": f"Bearer {token}", "X-Archipel-Origin": "EU"}
    served: dict[str, int] = {}
    failures, halt = [0], threading.Event()

    def load() -> None:  # steady traffic through the gateway while the loop retrains and rolls out
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, len(FEATURES)],
                        "datatype": "FP32",
                        "data": plain[0].tolist(),
                    }
                ]
            }
            while not halt.is_set():
                answer = client.post("/v2/models/malignancy/infer", json=body)
                if answer.status_code == 200:
                    version = json.loads(answer.content)["model_version"]
                    served[version] = served.get(version, 0) + 1
                else:
                    failures[0] += 1
                time.sleep(0.005)

    while _post(f"http://127.0.0.1:{port}", plain[:1], headers).status_code != 200:
        time.sleep(0.05)
    thread = threading.Thread(target=load)
    thread.start()
    try:
        before = get_deployment(engine, "malignancy").version
        reports = run_monitor(ws, engine, "malignancy", window_s=600)
        after = get_deployment(engine, "malignancy").version
        time.sleep(1.5)  # the gateways' table moves on; traffic keeps flowing on the new version
    finally:
        halt.set()
        thread.join()
        stop(gateway)
    from archipel.services.monitoring import list_alerts

    alerts = list_alerts(engine, "malignancy")
    yield Loop(ws, engine, rows, reports, alerts, served, failures[0], (before, after))
    down(ws, engine, "malignancy")
    engine.dispose()


def test_the_drifted_site_and_feature_are_flagged_and_no_other(loop: Loop) -> None:
    by_site = {r["site"]: r for r in loop.reports}
    assert set(by_site) == {FRANKFURT, NETHERLANDS}
    frankfurt, netherlands = by_site[FRANKFURT], by_site[NETHERLANDS]
    assert frankfurt["rows"] >= 2000 and netherlands["rows"] >= 2000  # what the samplers had written
    assert frankfurt["verdict"] == "drift" and frankfurt["drifted"] == [SHIFTED], frankfurt["features"]
    assert netherlands["verdict"] == "ok" and netherlands["drifted"] == [], netherlands["features"]
    assert frankfurt["schema"]["ok"] and netherlands["schema"]["ok"]  # training and serving schemas agree
    shifted = next(f for f in frankfurt["features"] if f["feature"] == SHIFTED)
    # the reference is the 341 training rows, at most 1000: Kolmogorov-Smirnov's p-value (Wasserstein above that)
    assert shifted["test"] == "ks" and shifted["score"] <= shifted["threshold"] == 0.05
    assert shifted["psi"] > 0.2
    assert [a["site"] for a in loop.outcome if a["kind"] == "drift"] == [FRANKFURT]


def test_the_alert_retrained_passed_the_gate_and_rolled_out_without_a_failed_request(loop: Loop) -> None:
    from archipel.policy.audit import AuditLog
    from archipel.services.models import get_version

    assert loop.versions == (1, 2)
    new = get_version(loop.engine, "malignancy@production")
    assert new.version == 2 and new.lineage["run_id"].startswith("retrain-malignancy")
    assert new.home_site in (FRANKFURT, NETHERLANDS)  # retrained where the patients may be
    audit = AuditLog(loop.engine, loop.ws.state_dir)
    assert [e.outcome for e in audit.entries(action="trigger.fire")] == ["done"]
    rolled = audit.entries(action="trigger.rolled-out")
    assert len(rolled) == 1 and "malignancy/2 serves malignancy (was v1)" in rolled[0].reason
    assert loop.failed == 0 and loop.served.get("1", 0) > 0 and loop.served.get("2", 0) > 0, loop.served


def test_a_failing_gate_stops_the_loop_and_says_why(loop: Loop) -> None:
    from archipel.services.deployments import get_deployment
    from archipel.services.monitoring import raise_alert

    ws = _set_floor(loop.ws.root, 0.999)
    outcomes = raise_alert(ws, loop.engine, "drift", "malignancy", FRANKFURT, "test: drift again", {})
    assert [o.stage for o in outcomes] == ["failed-at-gate"]
    assert "accuracy >= 0.999" in outcomes[0].reason and outcomes[0].version == 3
    assert get_deployment(loop.engine, "malignancy").version == 2  # nothing rolled out
    _set_floor(loop.ws.root, 0.5)


def test_raw_samples_never_leave_their_site(loop: Loop) -> None:
    """The canary areas sent to Frankfurt are in no Parquet file of any other site (decoded, not grepped) and in
    no table of the metadata store; every histogram count that left a site covers at least MIN_COUNT rows."""
    import pyarrow.parquet as pq
    from sqlalchemy import inspect, text

    for site in (NETHERLANDS, US):
        store = loop.ws.storage(site)
        for info in store.list(""):
            if info.key.endswith(".parquet"):
                table = pq.read_table(io.BytesIO(store.get(info.key)))
                for name in table.column_names:
                    column = table.column(name).to_numpy()
                    if column.dtype.kind == "f":
                        assert not np.any(column.astype(np.float32) == CANARY), (site, info.key, name)
    home = [i.key for i in loop.ws.storage(FRANKFURT).list("samples/") if i.key.endswith(".parquet")]
    areas = np.concatenate([pq.read_table(io.BytesIO(loop.ws.storage(FRANKFURT).get(k))).column("mean_area")
                            .to_numpy() for k in home])  # fmt: skip
    assert int(np.sum(areas.astype(np.float32) == CANARY)) == 5  # the canaries are there, at home
    spelled = {f"{float(CANARY):.4f}", f"{float(CANARY)!r}", repr(float(np.float64(CANARY)))}
    with loop.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            dump = " ".join(str(row) for row in conn.execute(text(f'SELECT * FROM "{table}"')))
            assert not any(s in dump for s in spelled), table
    for report in loop.reports:
        for name, histogram in report["histograms"].items():
            assert all(c == 0 or c >= MIN_COUNT for c in histogram["current"]), (report["site"], name)
        assert report["min_count_per_bin"] == MIN_COUNT


def _cli(loop: Loop, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archipel.cli", "--workspace", str(loop.ws.root), *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_cli_the_page_and_the_gauges_show_every_site(loop: Loop, tmp_path: Path) -> None:
    from archipel.services.tokens import create_token

    status = _cli(loop, "monitor", "status", "malignancy", "--json")
    assert status.returncode == 0, status.stderr
    verdicts = {r["site"]: r["verdict"] for r in json.loads(status.stdout)}
    assert verdicts == {FRANKFURT: "drift", NETHERLANDS: "ok"}
    table = _cli(loop, "monitor", "status")
    assert SHIFTED in table.stdout and FRANKFURT in table.stdout and NETHERLANDS in table.stdout
    assert "every site side by side" in table.stdout
    page = tmp_path / "drift.html"
    assert _cli(loop, "monitor", "report", "malignancy", "--html", str(page)).returncode == 0
    text = page.read_text()
    assert (
        text.count("<svg") == 2 * len(FEATURES) and SHIFTED in text and "at least 5 rows" in text
    )  # 10 features x 2 sites
    triggers = json.loads(_cli(loop, "triggers", "ls", "--json").stdout)
    assert [(t["name"], t["deployment"], t["on"]) for t in triggers] == [
        ("retrain-on-drift", "malignancy", ["drift"])
    ]
    alerts = json.loads(_cli(loop, "monitor", "alerts", "--json").stdout)
    assert {a["kind"] for a in alerts} == {"drift"} and alerts[-1]["site"] == FRANKFURT
    token = create_token(loop.ws, loop.engine, scope="read")[0]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "archipel.cli", "--workspace", str(loop.ws.root), "gateway", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = wait_listening(gateway)
        metrics = httpx.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
        ).text
    finally:
        stop(gateway)
    assert f'archipel_drift_detected{{deployment="malignancy",site="{FRANKFURT}"}} 1' in metrics
    assert f'archipel_drift_detected{{deployment="malignancy",site="{NETHERLANDS}"}} 0' in metrics
    assert 'archipel_alerts_total{deployment="malignancy",kind="drift"}' in metrics


def test_the_server_schedule_checks_each_deployment_every_interval(loop: Loop) -> None:
    from archipel.services.monitoring import due_checks

    tried: dict[str, float] = {}
    assert due_checks(loop.engine, tried) == []  # checked moments ago
    later = time.time() + 3601  # monitoring.every_s defaults to an hour
    assert due_checks(loop.engine, tried, now=later) == ["malignancy"]
    assert due_checks(loop.engine, tried, now=later + 60) == []  # just tried: not again before the interval


def test_a_service_level_breach_on_the_replicas_own_counters_raises_an_slo_alert(loop: Loop) -> None:
    from archipel.db.engine import session_scope
    from archipel.db.orm import DeploymentRow
    from archipel.services.monitoring import check_slo, list_alerts

    figures = check_slo(loop.ws, loop.engine, "malignancy")  # the defaults: 1 % errors, p99 250 ms
    answered = {f["site"] for f in figures if f["answers"]}
    assert answered and all(f["error_rate"] == 0 and f["p99_ms"] <= 250 for f in figures if f["answers"])
    assert not [a for a in list_alerts(loop.engine) if a["kind"] == "slo"]
    with session_scope(loop.engine) as session:  # a deployment asking for the impossible
        row = session.get(DeploymentRow, "malignancy")
        row.spec = {**row.spec, "monitoring": {**row.spec["monitoring"], "slo": {"p99_ms": 0.0001}}}
    check_slo(loop.ws, loop.engine, "malignancy")
    slo = [a for a in list_alerts(loop.engine) if a["kind"] == "slo"]
    assert {a["site"] for a in slo} == answered and all("p99" in a["reason"] for a in slo)


def test_a_rule_that_keeps_statistics_at_their_site_withholds_the_report(loop: Loop) -> None:
    """`aggregate_export: false`: the drift job still runs where the samples are and leaves its report there, but
    not a statistic of it reaches the metadata store; the decision is audited, and no alert or loop can follow.
    (At the end of this module: it leaves withheld reports as the latest.)"""
    import json as json_

    from archipel.policy.audit import AuditLog
    from archipel.services.monitoring import list_alerts, run_monitor
    from archipel.workspace import load_workspace

    yaml_path = loop.ws.root / "archipel.yaml"
    before = yaml_path.read_text()
    yaml_path.write_text(before + "\npolicies:\n  - {name: statistics-stay, match: {datasets: [patients-eu]}, "
                         "aggregate_export: false}\n")  # fmt: skip
    alerts = len(list_alerts(loop.engine, "malignancy", 1000))
    try:
        reports = run_monitor(load_workspace(loop.ws.root), loop.engine, "malignancy", window_s=3600)
    finally:
        yaml_path.write_text(before)
    assert {r["site"]: r["verdict"] for r in reports} == {FRANKFURT: "withheld", NETHERLANDS: "withheld"}
    for r in reports:
        assert (
            r["features"] == r["predictions"] == [] and r["histograms"] == {} and r["share_drifted"] is None
        )
        assert "statistics-stay" in r["note"]
        key = r["note"].split("(", 1)[1].split(")", 1)[0]  # the report, at its own site
        kept = json_.loads(loop.ws.storage(r["site"]).get(key))
        assert {"rows", "report"} <= set(kept)  # whatever the window held (the rolled-out version's samples)
    refused = [e for e in AuditLog(loop.engine, loop.ws.state_dir).entries(action="policy.aggregate_export")
               if e.outcome == "refused"]  # fmt: skip
    assert sorted(e.sites[0] for e in refused) == sorted([FRANKFURT, NETHERLANDS])
    assert all("statistics-stay" in e.reason for e in refused)
    assert len(list_alerts(loop.engine, "malignancy", 1000)) == alerts  # Frankfurt's drift raised nothing


def test_a_check_started_from_a_remote_control_plane(loop: Loop) -> None:
    """`monitor run` against ARCHIPEL_URL: the server runs the drift jobs and the service-level check and answers
    what the local command prints (checked against its schema by the server); the stored reports are those."""
    import os

    from tests.api.conftest import start_server, tokens_for

    token = tokens_for(loop.ws, "deploy", name="monitor")["deploy"]
    proc, url = start_server(loop.ws.root)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_")}
        env.update(ARCHIPEL_URL=url, ARCHIPEL_TOKEN=token, NO_COLOR="1", COLUMNS="200")
        done = subprocess.run([sys.executable, "-m", "archipel.cli", "monitor", "run", "malignancy", "--window", "1h",
                               "--json"], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        shown = subprocess.run([sys.executable, "-m", "archipel.cli", "triggers", "ls", "--json"],
                               capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    finally:
        stop(proc)
    assert {r["site"] for r in answer["drift"]} == {FRANKFURT, NETHERLANDS}
    assert {r["site"] for r in answer["slo"]} == {FRANKFURT, NETHERLANDS}
    stored = {r["site"]: r for r in json.loads(_cli(loop, "monitor", "status", "--json").stdout)}
    assert {r["site"]: r["id"] for r in answer["drift"]} == {s: r["id"] for s, r in stored.items()}
    assert json.loads(shown.stdout) == json.loads(_cli(loop, "triggers", "ls", "--json").stdout)
    assert [t["name"] for t in json.loads(shown.stdout)] == ["retrain-on-drift"]
