"""The gateway over real replicas: auth on every route, residency checked on the replicas' own counters and
failing closed, and failover under load with a replica SIGKILLed: no failed request, ejection and re-admission
within the bounds the health-check settings give."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serving.conftest import stop, wait_listening

HEALTH_S, EJECT_S = 0.2, 1.0
POLICY = """
policies:
  - name: scores-travel-requests-stay
    description: Models from pii data may be copied anywhere; a request is answered only in its own jurisdiction.
    match: {classifications: [pii]}
    derive_export: true
    serve: {jurisdictions: [requester]}
"""


@dataclass
class Stack:
    ws: Any
    engine: Any
    gateway: str
    proc: subprocess.Popen[str]
    tokens: dict[str, str]
    X: np.ndarray


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    from archipel.data.samples import write_patients_csvs
    from archipel.db import connect
    from archipel.models.deployment import DeploymentSpec
    from archipel.registry.convert import convert
    from archipel.services.apply import apply_plan, plan_apply
    from archipel.services.data import add_dataset
    from archipel.services.deployments import deploy, down
    from archipel.services.init import init_workspace
    from archipel.services.models import register_version
    from archipel.services.tokens import create_token
    from archipel.workspace import load_workspace

    root = tmp_path_factory.mktemp("gateway")
    ws = init_workspace(root / "ws", demo=True)
    ws.file.write_text(ws.file.read_text() + POLICY)
    ws = load_workspace(ws.root)
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    csv = write_patients_csvs(root / "patients")["patients-eu"]
    add_dataset(ws, engine, "patients-pii", csv, site="onprem-frankfurt", classification="pii")
    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    model = GradientBoostingClassifier(n_estimators=30, random_state=0).fit(X, y)
    register_version(
        ws, engine, "cancer", convert(model, X[:32]), site="onprem-frankfurt", datasets=["patients-pii"]
    )
    deploy(
        ws,
        engine,
        DeploymentSpec(name="cancer", model="cancer/1", sites=["gcp-europe-west4", "aws-us-east-1"]),
    )
    deploy(
        ws,
        engine,
        DeploymentSpec(name="cancer-eu", model="cancer/1", sites=["onprem-frankfurt", "gcp-europe-west4"]),
    )
    tokens = {
        "read": create_token(ws, engine, scope="read")[0],
        "infer": create_token(ws, engine, scope="infer", origins=["EU", "US"])[0],
        "eu": create_token(ws, engine, scope="infer", origins=["EU"])[0],
        "other": create_token(ws, engine, scope="infer", origins=["EU"], deployment="other")[0],
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "archipel.cli", "--workspace", str(ws.root), "gateway", "--port", "0",
         "--health-interval-s", str(HEALTH_S), "--base-ejection-s", str(EJECT_S)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = wait_listening(proc)
    yield Stack(ws, engine, f"http://127.0.0.1:{port}", proc, tokens, X)
    stop(proc)
    for name in ("cancer", "cancer-eu"):
        down(ws, engine, name)
    engine.dispose()


def test_prometheus_targets_list_every_replica_across_sites(stack: Stack) -> None:
    import json

    groups = json.loads((stack.ws.state_dir / "prometheus" / "archipel-replicas.json").read_text())
    sites = sorted((g["labels"]["deployment"], g["labels"]["site"]) for g in groups)
    assert sites == [("cancer", "aws-us-east-1"), ("cancer", "gcp-europe-west4"),
                     ("cancer-eu", "gcp-europe-west4"), ("cancer-eu", "onprem-frankfurt")]  # fmt: skip
    for group in groups:  # each target answers with Prometheus text
        assert "archipel_inference_in_flight" in httpx.get(f"http://{group['targets'][0]}/metrics").text


def _infer_body(X: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": list(X.shape), "datatype": "FP32", "data": X.reshape(-1).tolist()}
        ]
    }


def _h(token: str | None, origin: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if origin:
        headers["X-Archipel-Origin"] = origin
    return headers


ROUTES = [
    ("GET", "/v2"),
    ("GET", "/v2/models/cancer"),
    ("GET", "/v2/models/cancer/ready"),
    ("GET", "/v2/models/cancer/versions/1"),
    ("POST", "/v2/models/cancer/infer"),
    ("GET", "/metrics"),
]


def test_every_route_but_health_needs_a_token_of_the_right_scope(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway) as client:
        assert (
            client.get("/v2/health/live").status_code == 200
            and client.get("/v2/health/ready").status_code == 200
        )
        for method, path in ROUTES:
            body = _infer_body(stack.X[:1]) if method == "POST" else None
            assert client.request(method, path, json=body).status_code == 401, path
            assert (
                client.request(
                    method, path, json=body, headers=_h("arch_000000000000_" + "x" * 43)
                ).status_code
                == 401
            )
            needs_infer = path.endswith("/infer")
            status = client.request(method, path, json=body, headers=_h(stack.tokens["read"])).status_code
            assert status == (403 if needs_infer else 200), (path, status)
            if path.startswith("/v2/models/"):
                assert (
                    client.request(
                        method, path, json=body, headers=_h(stack.tokens["other"], "EU")
                    ).status_code
                    == 403
                )
        ok = client.post(
            "/v2/models/cancer/infer", json=_infer_body(stack.X[:2]), headers=_h(stack.tokens["infer"], "EU")
        )
        assert ok.status_code == 200
        # an origin the token may not assert
        wrong = client.post(
            "/v2/models/cancer/infer", json=_infer_body(stack.X[:2]), headers=_h(stack.tokens["eu"], "US")
        )
        assert wrong.status_code == 403


def _replica_counts(stack: Stack, deployment: str) -> dict[str, float]:
    from archipel.services.deployments import get_deployment

    counts = {}
    for replica in get_deployment(stack.engine, deployment).replicas:
        text = httpx.get(f"{replica['url']}/metrics").text
        counts[replica["site"]] = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("archipel_inference_requests_total") and 'status="200"' in line
        )  # fmt: skip
    return counts


def test_requests_are_served_only_in_their_origin_and_fail_closed(stack: Stack) -> None:
    before = _replica_counts(stack, "cancer")
    with httpx.Client(base_url=stack.gateway) as client:
        for origin, n in (("EU", 30), ("US", 20)):
            for _ in range(n):
                r = client.post(
                    "/v2/models/cancer/infer",
                    json=_infer_body(stack.X[:3]),
                    headers=_h(stack.tokens["infer"], origin),
                )
                expected = {"EU": "gcp-europe-west4", "US": "aws-us-east-1"}[origin]
                assert r.status_code == 200 and r.headers["x-archipel-site"] == expected
        after = _replica_counts(stack, "cancer")
        # the replicas' own counters: 30 at the EU replica, 20 at the US one (nothing crossed)
        assert after["gcp-europe-west4"] - before["gcp-europe-west4"] == 30
        assert after["aws-us-east-1"] - before["aws-us-east-1"] == 20
        # no origin header: a token for EU and US needs a site allowed for both, and there is none
        assert (
            client.post(
                "/v2/models/cancer/infer", json=_infer_body(stack.X[:1]), headers=_h(stack.tokens["infer"])
            ).status_code
            == 503
        )
        # a token for EU only is served in the EU without the header
        r = client.post(
            "/v2/models/cancer/infer", json=_infer_body(stack.X[:1]), headers=_h(stack.tokens["eu"])
        )
        assert r.status_code == 200 and r.headers["x-archipel-site"] == "gcp-europe-west4"
    # the Python client speaks the same protocol
    import archipel

    with archipel.Client(stack.gateway, token=stack.tokens["infer"], origin="US") as sdk:
        labels = sdk.infer("cancer", stack.X[:4], request_id="sdk-1")["label"]
    assert len(labels) == 4 and set(labels) <= {0, 1}
    # the EU replica dies: EU requests fail closed (503) rather than go to the US one; US requests still succeed
    _kill_replica(stack, "cancer", "gcp-europe-west4")
    eu, us = _h(stack.tokens["infer"], "EU"), _h(stack.tokens["infer"], "US")
    with httpx.Client(base_url=stack.gateway) as client:
        deadline = time.monotonic() + 5
        statuses = []
        while time.monotonic() < deadline:
            r = client.post("/v2/models/cancer/infer", json=_infer_body(stack.X[:1]), headers=eu)
            statuses.append(r.status_code)
            assert r.status_code in (200, 503) and r.headers.get("x-archipel-site") != "aws-us-east-1"
            if r.status_code == 503:
                break
        assert statuses[-1] == 503
        r = client.post("/v2/models/cancer/infer", json=_infer_body(stack.X[:1]), headers=us)
        assert r.status_code == 200 and r.headers["x-archipel-site"] == "aws-us-east-1"


def test_between_equally_busy_replicas_the_faster_one_is_preferred(stack: Stack) -> None:
    """onprem-frankfurt's replica moved behind a link adding 25 ms a round trip (a new replica row, as a redeploy would
    write it): one request at a time, both idle, the gateway sends most of them to gcp-europe-west4; its latency
    gauge says why. The original row is restored."""
    from archipel.db.engine import session_scope
    from archipel.db.orm import ReplicaRow
    from archipel.testing.proxy import FaultProxy, Faults

    with session_scope(stack.engine) as session:
        old = (
            session.query(ReplicaRow)
            .filter_by(deployment="cancer-eu", site="onprem-frankfurt", state="running")
            .one()
        )
        port = int(old.url.rsplit(":", 1)[1])
    with FaultProxy(("127.0.0.1", port), faults=Faults(latency_s=0.025)) as proxy:
        with session_scope(stack.engine) as session:
            row = session.get(ReplicaRow, old.id)
            row.state = "stopped"
            far = ReplicaRow(deployment="cancer-eu", site="onprem-frankfurt", jurisdiction=row.jurisdiction,
                             version=row.version, url=f"http://127.0.0.1:{proxy.port}", job_id=row.job_id,
                             state="running", hourly_usd=row.hourly_usd)  # fmt: skip
            session.add(far)
            session.flush()
            far_id = far.id
        try:
            time.sleep(1.5)  # the gateway re-reads its table
            sites: dict[str, int] = {}
            with httpx.Client(
                base_url=stack.gateway, headers=_h(stack.tokens["eu"], "EU"), timeout=10
            ) as client:
                for _ in range(60):
                    answer = client.post("/v2/models/cancer-eu/infer", json=_infer_body(stack.X[:1]))
                    assert answer.status_code == 200
                    site = answer.headers["x-archipel-site"]
                    sites[site] = sites.get(site, 0) + 1
            metrics = httpx.get(f"{stack.gateway}/metrics", headers=_h(stack.tokens["read"])).text
        finally:
            with session_scope(stack.engine) as session:
                session.delete(session.get(ReplicaRow, far_id))
                session.get(ReplicaRow, old.id).state = "running"
            time.sleep(1.5)
    assert sites.get("gcp-europe-west4", 0) >= 48, sites  # 80 %
    latency = {line.split('site="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
               for line in metrics.splitlines()
               if line.startswith("archipel_gateway_replica_latency_seconds") and "cancer-eu" in line
               and (f'replica="{far_id}"' in line or "gcp-europe-west4" in line)}  # fmt: skip
    assert latency["onprem-frankfurt"] > 0.02 > latency["gcp-europe-west4"], (
        latency
    )  # the link adds 25 ms a round trip


def _kill_replica(stack: Stack, deployment: str, site: str) -> tuple[int, dict[str, Any]]:
    from archipel.services.deployments import get_deployment

    replica = next(r for r in get_deployment(stack.engine, deployment).replicas if r["site"] == site)
    pid = stack.ws.compute(site).status(replica["job_id"]).pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    return int(replica["url"].rsplit(":", 1)[1]), replica


def _ejected(stack: Stack, replica_id: int) -> bool:
    text = httpx.get(f"{stack.gateway}/metrics", headers=_h(stack.tokens["read"])).text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("archipel_gateway_replica_ejected") and f'replica="{replica_id}"' in line
    )
    return line.endswith(" 1")


@contextmanager
def _closed_loop(stack: Stack, clients: int) -> Iterator[list[int]]:
    """``clients`` threads each sending infer requests to ``cancer-eu`` through the gateway, one after another, until
    the block ends; yields the list their status codes are appended to."""
    results: list[int] = []
    stop_load = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=stack.gateway, headers=_h(stack.tokens["eu"], "EU"), timeout=10) as client:
            while not stop_load.is_set():
                results.append(
                    client.post("/v2/models/cancer-eu/infer", json=_infer_body(stack.X[:2])).status_code
                )

    threads = [threading.Thread(target=load) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        stop_load.set()
        for t in threads:
            t.join()


def test_failover_under_load_drops_no_request(stack: Stack, tmp_path: Path) -> None:

    with _closed_loop(stack, 4) as results:
        time.sleep(1.0)
        port, replica = _kill_replica(stack, "cancer-eu", "onprem-frankfurt")
        killed_at = time.monotonic()
        while not _ejected(stack, replica["id"]):
            assert time.monotonic() - killed_at < 10
            time.sleep(0.02)
        ejected_after = time.monotonic() - killed_at
        time.sleep(1.0)  # load keeps flowing to the surviving replica
        # restart a server on the same address: re-admitted once healthy (and any ejection has run out)
        argv = [sys.executable, "-m", "archipel.cli", "--workspace", str(stack.ws.root), "serve-replica", "cancer/1",
                "--site", "onprem-frankfurt", "--port", str(port)]  # fmt: skip
        restarted = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_listening(restarted)
            up_at = time.monotonic()
            while _ejected(stack, replica["id"]):
                assert time.monotonic() - up_at < 10
                time.sleep(0.02)
            readmitted_after = time.monotonic() - up_at
            time.sleep(0.5)
        finally:
            stop(restarted)
    failed = [s for s in results if s != 200]
    print(f"\nfailover: {len(results)} requests, {len(failed)} failed; ejected {ejected_after * 1000:.0f} ms after the "
          f"kill (bound {(HEALTH_S + 0.5) * 1000:.0f} ms + a tick); re-admitted {readmitted_after * 1000:.0f} ms after "
          f"the restart (bound {max(EJECT_S, HEALTH_S) * 1000 + HEALTH_S * 1000:.0f} ms)")  # fmt: skip
    assert len(results) > 100 and failed == []
    assert ejected_after <= HEALTH_S + 0.5 + 0.5  # one interval + the check's timeout, plus scheduling slack
    assert readmitted_after <= EJECT_S + 2 * HEALTH_S + 0.5


def test_a_rolling_update_and_a_rollback_under_load_drop_no_request(stack: Stack) -> None:
    from sklearn.linear_model import LogisticRegression

    from archipel.models.deployment import DeploymentSpec
    from archipel.registry.convert import convert
    from archipel.services.deployments import deploy, get_deployment, rollback_deployment
    from archipel.services.models import register_version

    y = (stack.X[:, 0] > np.median(stack.X[:, 0])).astype(int)
    converted = convert(LogisticRegression(max_iter=5000).fit(stack.X / stack.X.max(axis=0), y), stack.X[:32])
    v2 = register_version(
        stack.ws, stack.engine, "cancer", converted, site="onprem-frankfurt", datasets=["patients-pii"]
    )
    with _closed_loop(stack, 3) as results:
        sites = ["onprem-frankfurt", "gcp-europe-west4"]
        updated = deploy(stack.ws, stack.engine, DeploymentSpec(name="cancer-eu", model=v2.ref, sites=sites))
        assert updated.version == v2.version and {r["version"] for r in updated.replicas} == {v2.version}
        rolled = rollback_deployment(stack.ws, stack.engine, "cancer-eu")
        assert rolled.version == 1 and {r["version"] for r in rolled.replicas} == {1}
        time.sleep(1.5)
    failed = [s for s in results if s != 200]
    print(f"\nrolling update + rollback: {len(results)} requests, {len(failed)} failed")
    assert len(results) > 100 and failed == []
    assert get_deployment(stack.engine, "cancer-eu").previous_version == v2.version


def test_a_canary_takes_its_share_of_the_traffic(stack: Stack) -> None:
    from sklearn.linear_model import LogisticRegression

    from archipel.models.deployment import DeploymentSpec
    from archipel.registry.convert import convert
    from archipel.services.deployments import deploy, down
    from archipel.services.models import register_version

    y = (stack.X[:, 1] > np.median(stack.X[:, 1])).astype(int)
    converted = convert(LogisticRegression(max_iter=5000).fit(stack.X / stack.X.max(axis=0), y), stack.X[:32])
    canary = register_version(
        stack.ws, stack.engine, "cancer", converted, site="onprem-frankfurt", datasets=["patients-pii"]
    )
    spec = DeploymentSpec.model_validate({"name": "cancer-canary", "model": "cancer/1", "sites": ["gcp-europe-west4"],
                                          "canary": {"model": canary.ref, "weight": 0.3}})  # fmt: skip
    deployed = deploy(stack.ws, stack.engine, spec)
    assert sorted(r["version"] for r in deployed.replicas) == [1, canary.version]
    try:
        time.sleep(1.5)  # the gateway re-reads its table
        versions = []
        with httpx.Client(base_url=stack.gateway, headers=_h(stack.tokens["eu"], "EU")) as client:
            for _ in range(300):
                r = client.post("/v2/models/cancer-canary/infer", json=_infer_body(stack.X[:1]))
                assert r.status_code == 200
                versions.append(r.json()["model_version"])
        share = versions.count(str(canary.version)) / len(versions)
        print(f"\ncanary share: {share:.2f} of {len(versions)} (weight 0.3)")
        assert 0.2 <= share <= 0.4  # 300 draws at p=0.3: 0.2-0.4 holds with probability > 0.999
    finally:
        down(stack.ws, stack.engine, "cancer-canary")
