"""A deployment made with ``ARCHIPEL_REPLICA_SECRET`` set: its replicas refuse requests without the secret, a gateway
started with the same variable serves through them, and the secret is in no file the deployment wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.conftest import stop, wait_listening

SECRET = "replica-secret-8d0f3b1c9a"


def test_replicas_deployed_with_a_secret_take_traffic_from_gateways_only(
    served_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from archipel.db import connect
    from archipel.models.deployment import DeploymentSpec
    from archipel.services.deployments import deploy, down
    from archipel.services.tokens import create_token
    from archipel.workspace import load_workspace

    root, X, _, _ = served_model
    ws = load_workspace(root)
    engine = connect(ws.db_url)
    monkeypatch.setenv("ARCHIPEL_REPLICA_SECRET", SECRET)
    spec = DeploymentSpec(name="guarded", model="cancer/1", sites=["gcp-europe-west4"])
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": X[0].tolist()}]}
    gateway = None
    try:
        url = deploy(ws, engine, spec).replicas[0]["url"]
        token = create_token(ws, engine, scope="infer", deployment="guarded")[0]
        direct = httpx.post(f"{url}/v2/models/cancer/infer", json=body)
        assert direct.status_code == 401 and "gateways only" in direct.text
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # health stays public
        with_secret = httpx.post(f"{url}/v2/models/cancer/infer", json=body,
                                 headers={"X-Archipel-Replica-Secret": SECRET})  # fmt: skip
        assert with_secret.status_code == 200

        def through(env: dict[str, str]) -> httpx.Response:
            nonlocal gateway
            gateway = subprocess.Popen(
                [sys.executable, "-m", "archipel.cli", "--workspace", str(ws.root), "gateway", "--port", "0"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            port = wait_listening(gateway)
            try:
                return httpx.post(f"http://127.0.0.1:{port}/v2/models/guarded/infer", json=body,
                                  headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
            finally:
                stop(gateway)

        assert (
            through(dict(os.environ)).json()["outputs"][0]["data"] == with_secret.json()["outputs"][0]["data"]
        )
        without = {k: v for k, v in os.environ.items() if k != "ARCHIPEL_REPLICA_SECRET"}
        refused = through(without)  # a gateway without the secret gets nothing from the replica, and says why
        assert refused.status_code == 503 and "ARCHIPEL_REPLICA_SECRET" in refused.text, refused.text
        leaked = [
            p for p in Path(ws.state_dir).rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()
        ]
        assert leaked == []
    finally:
        down(ws, engine, "guarded")
        engine.dispose()


def test_replica_hours_are_charged_at_the_site_catalog_price(served_model: Any) -> None:
    """gcp-europe-west4 has no ``pricing`` of its own: a replica's half CPU is priced from the catalog's cheapest
    on-demand offer there, and its hours reach the ledger when it stops."""
    from sqlalchemy import select

    from archipel.db import connect
    from archipel.db.engine import session_scope
    from archipel.db.orm import CostEntryRow
    from archipel.models.deployment import DeploymentSpec
    from archipel.services.deployments import deploy, down
    from archipel.services.offers import OfferRequest, find_offers
    from archipel.workspace import load_workspace

    root = served_model[0]
    ws = load_workspace(root)
    engine = connect(ws.db_url)
    cheapest = find_offers(ws, OfferRequest(cpus=0.5, sites=("gcp-europe-west4",)))[0]
    expected = cheapest.hourly * min(1.0, 0.5 / cheapest.offer.vcpus)
    try:
        view = deploy(ws, engine, DeploymentSpec(name="priced", model="cancer/1", sites=["gcp-europe-west4"]))
        assert view.replicas[0]["hourly_usd"] == pytest.approx(expected) and expected > 0
    finally:
        down(ws, engine, "priced")
    with session_scope(engine) as session:
        rows = list(session.scalars(select(CostEntryRow).where(CostEntryRow.deployment_id == "priced")))
    engine.dispose()
    assert [(r.kind, r.site, r.unit) for r in rows] == [("serving", "gcp-europe-west4", "h")]
    assert rows[0].unit_price_usd == pytest.approx(expected) and rows[0].quantity > 0
