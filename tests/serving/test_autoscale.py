"""Autoscaling between min and max from the replicas' own request counters."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from archipel.services.deployments import desired_replicas


@pytest.mark.parametrize(
    ("current", "qps", "want"),
    [
        (1, 0.0, 1),
        (1, 15.0, 1),
        (1, 25.0, 2),
        (1, 500.0, 3),
        (2, 25.0, 2),
        (2, 15.0, 1),
        (3, 30.0, 2),
        (3, 33.0, 3),  # 33 req/s on 2 replicas would be above 80 % of their target: stay
        (3, 0.0, 2),
    ],
)
def test_desired_replicas(current: int, qps: float, want: int) -> None:
    assert desired_replicas(current, qps, target_qps=20.0, low=1, high=3) == want  # down one step at a time


def test_a_deployment_scales_up_under_load_and_back_down(served_model: Any) -> None:
    from archipel.db import connect
    from archipel.models.deployment import DeploymentSpec
    from archipel.services.deployments import autoscale, deploy, down, get_deployment
    from archipel.workspace import load_workspace

    root, X, _, _ = served_model
    ws = load_workspace(root)
    engine = connect(ws.db_url)
    spec = DeploymentSpec.model_validate({"name": "scaled", "model": "cancer/1", "sites": ["gcp-europe-west4"],
                                          "replicas": {"min": 1, "max": 2, "target_qps": 20}})  # fmt: skip
    try:
        url = deploy(ws, engine, spec).replicas[0]["url"]
        seen: dict[int, tuple[float, float]] = {}
        assert autoscale(ws, engine, "scaled", seen=seen) == {}  # the first step only reads the counters
        body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": X[0].tolist()}]}
        stop = threading.Event()

        def load() -> None:  # ~100 requests a second
            with httpx.Client() as client:
                while not stop.is_set():
                    client.post(f"{url}/v2/models/cancer/infer", json=body)
                    time.sleep(0.01)

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(1.5)
        stop.set()
        thread.join()
        assert autoscale(ws, engine, "scaled", seen=seen) == {"gcp-europe-west4": (1, 2)}
        assert len(get_deployment(engine, "scaled").replicas) == 2
        time.sleep(0.5)
        assert autoscale(ws, engine, "scaled", seen=seen) == {"gcp-europe-west4": (2, 1)}  # idle: back to min
        assert len(get_deployment(engine, "scaled").replicas) == 1
    finally:
        down(ws, engine, "scaled")
        engine.dispose()
