"""The model server as clients see it: OIP v2 routes, predictions equal to the model's, batching under
concurrency, metrics, the replica secret, and a corpus of bad input that gets 4xx while the server stays up."""

from __future__ import annotations

import concurrent.futures
import json
import math
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serving.conftest import Replica


def _tensor(rows: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.reshape(-1).tolist(),
            }
        ]
    }


def test_oip_routes_and_predictions_equal_to_the_model(replica: Replica) -> None:
    with httpx.Client(base_url=replica.url, headers=replica.headers()) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2").json()["name"] == "archipel"
        meta = client.get("/v2/models/cancer").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
        assert client.get("/v2/models/cancer/versions/1").status_code == 200
        assert client.get("/v2/models/cancer/ready").json() == {"name": "cancer", "ready": True}
        rows = replica.X[:40]
        trace = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        response = client.post(
            "/v2/models/cancer/infer",
            json={**_tensor(rows), "id": "req-1"},
            headers={"X-Request-Id": "abc", "traceparent": trace},
        )
        assert response.status_code == 200 and response.headers["x-request-id"] == "abc"
        assert response.headers["traceparent"].startswith("00-111")
        body = response.json()
        assert body["id"] == "req-1" and body["model_name"] == "cancer" and body["model_version"] == "1"
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["label"]["data"] == replica.model.predict(rows).tolist()
        probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(
            outputs["probabilities"]["shape"]
        )
        np.testing.assert_allclose(probabilities, replica.model.predict_proba(rows), atol=1e-5)
        # the same rows, one tensor per feature (tabular models take their feature names)
        by_feature = {"inputs": [{"name": f, "shape": [40], "datatype": "FP32", "data": rows[:, i].tolist()}
                                 for i, f in enumerate(replica.feature_names)]}  # fmt: skip
        again = client.post("/v2/models/cancer/infer", json=by_feature).json()
        assert {o["name"]: o["data"] for o in again["outputs"]}["label"] == outputs["label"]["data"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(replica: Replica) -> None:
    def one(i: int) -> tuple[int, list[int]]:
        rows = replica.X[i : i + 3]
        with httpx.Client(base_url=replica.url, headers=replica.headers()) as client:
            out = client.post("/v2/models/cancer/infer", json=_tensor(rows)).json()
        return i, {o["name"]: o["data"] for o in out["outputs"]}["label"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(0, 300, 3)))
    for i, labels in results:
        assert labels == replica.model.predict(replica.X[i : i + 3]).tolist()
    metrics = httpx.get(f"{replica.url}/metrics", headers=replica.headers()).text
    sizes = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
             for line in metrics.splitlines() if line.startswith("archipel_inference_batch_size_bucket")}  # fmt: skip
    assert sizes["+Inf"] > sizes["4"]  # some calls carried several requests' rows (3 rows each)
    assert 'archipel_inference_requests_total{model="cancer",version="1",status="200"}' in metrics
    assert "archipel_inference_in_flight 0" in metrics


def test_only_gateways_reach_a_replica_and_health_is_public(replica: Replica) -> None:
    assert httpx.get(f"{replica.url}/v2/health/ready").status_code == 200
    for path in ("/v2", "/v2/models/cancer", "/metrics"):
        assert httpx.get(f"{replica.url}{path}").status_code == 401
        assert (
            httpx.get(f"{replica.url}{path}", headers={"X-Archipel-Replica-Secret": "wrong"}).status_code
            == 401
        )
    assert httpx.post(f"{replica.url}/v2/models/cancer/infer", json=_tensor(replica.X[:1])).status_code == 401


BAD: list[tuple[str, Any]] = [
    (
        "wrong datatype",
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "INT64", "data": [1] * 30}]},
    ),
    (
        "shape/data mismatch",
        {"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": [0.0] * 30}]},
    ),
    (
        "wrong width",
        {"inputs": [{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": [0.0] * 29}]},
    ),
    (
        "NaN",
        {
            "inputs": [
                {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [math.nan] + [0.0] * 29}
            ]
        },
    ),
    (
        "negative dims",
        {"inputs": [{"name": "input", "shape": [-1, 30], "datatype": "FP32", "data": [0.0] * 30}]},
    ),
    ("strings", {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ["x"] * 30}]}),
    ("no inputs", {"inputs": []}),
    ("unknown input", {"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
    ("not an object", [1, 2, 3]),
    ("nested garbage", {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [[[]]]}]}),
]


@pytest.mark.parametrize(("case", "body"), BAD, ids=[c for c, _ in BAD])
def test_bad_input_is_a_4xx_with_a_message(replica: Replica, case: str, body: Any) -> None:
    payload = json.dumps(body, allow_nan=True)
    response = httpx.post(f"{replica.url}/v2/models/cancer/infer", content=payload,
                          headers={**replica.headers(), "content-type": "application/json"})  # fmt: skip
    assert response.status_code == 400, (case, response.text)
    assert response.json()["error"]


def test_invalid_json_huge_bodies_and_wrong_routes(replica: Replica) -> None:
    h = {**replica.headers(), "content-type": "application/json"}
    url = f"{replica.url}/v2/models/cancer/infer"
    assert httpx.post(url, content=b"{not json", headers=h).status_code == 400
    big = (
        b'{"inputs": [' + b"0," * (25 * 2**20) + b"0]}"
    )  # 50 MB, over the 1 MB limit: refused from its length
    assert httpx.post(url, content=big, headers=h).status_code == 413

    def chunks() -> Any:  # no Content-Length: refused once the bytes read pass the limit
        for _ in range(50):
            yield b" " * 2**20

    assert httpx.post(url, content=chunks(), headers=h).status_code == 413
    assert httpx.get(url, headers=h).status_code == 405
    assert httpx.get(f"{replica.url}/v2/models/other", headers=h).status_code == 404
    # after all of it, the server still answers correctly
    ok = httpx.post(url, json=_tensor(replica.X[:2]), headers=replica.headers())
    assert ok.status_code == 200 and replica.proc.poll() is None


def test_a_replica_without_a_secret_refuses_to_bind_beyond_loopback(served_model: Any) -> None:
    from tests.serving.conftest import start_replica

    proc = start_replica(served_model[0], extra=("--host", "0.0.0.0"))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "needs a shared secret" in err


def test_samples_with_predictions_stay_in_the_sites_own_storage(served_model: Any) -> None:
    from archipel.data.ingest import read_parquet
    from archipel.workspace import load_workspace
    from tests.serving.conftest import start_replica, stop, wait_listening

    root, X, model, names = served_model
    proc = start_replica(root, extra=("--sample-rate", "1.0"))
    port = wait_listening(proc)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for i in range(20):
            assert (
                client.post("/v2/models/cancer/infer", json=_tensor(X[i * 3 : i * 3 + 3])).status_code == 200
            )
    stop(proc)  # SIGTERM: the replica flushes what it kept before it exits
    store = load_workspace(root).storage("gcp-europe-west4")
    keys = [info.key for info in store.list("samples/cancer/1/gcp-europe-west4/")]
    assert keys, "no samples were written"
    tables = [read_parquet(store.get(key)).to_pandas() for key in keys]
    import pandas as pd

    samples = pd.concat(tables).sort_values("at", kind="stable")
    assert len(samples) == 60 and samples["request_id"].nunique() == 20
    np.testing.assert_allclose(samples[names].to_numpy(), X[:60], rtol=0, atol=0)
    assert samples["output_label"].tolist() == model.predict(X[:60]).tolist()
    assert {"output_probabilities_0", "output_probabilities_1"} <= set(samples.columns)
    for other in ("aws-us-east-1", "onprem-frankfurt"):  # nothing left the site
        assert not list(load_workspace(root).storage(other).list("samples/"))
