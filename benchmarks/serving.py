"""Model serving: archipel's model server against a plain FastAPI + ONNX Runtime server; batching; cold start.

One closed-loop client (asyncio Protocol connections on uvloop, HTTP/1.1 keep-alive, a pre-built request sent again
as soon as its response is complete, raw latencies: no coordinated-omission correction) drives every server at
concurrency 1, 8 and 32, ``--duration`` s each after a warm-up, servers taking turns at each level; client pinned
to CPU 0, servers to CPU 1. Per row: server CPU (``/proc/PID/stat`` utime+stime) per request and as a share of the
run; ``runq%``, how long its loop thread waited for its CPU (``/proc/PID/schedstat``: other processes, i.e. noise);
the client's own CPU. ``archipel`` rows also split server CPU into the model's (``model us``, counted by the
launcher's wrapper around the model function) and the rest (HTTP, JSON, batching), and give the mean batch.

1. Breast-cancer GradientBoostingClassifier (100 trees) via ``archipel.registry.convert``: ``archipel`` is
   ``build_server`` with the default ``ServerConfig`` (max_batch 64, max_wait_ms 0) served by ``run_server``
   (archipel's HTTP/1.1 layer on uvloop and httptools) as replicas run it; ``fastapi+ort`` is the obvious
   baseline (``async def`` endpoint, pydantic OIP models in and out, ``session.run`` per request, ``uvicorn
   --loop uvloop --http httptools --no-access-log``, one intra-op thread like archipel's: ORT's default spare
   thread spins on the pinned core and doubles the baseline's CPU); ``ort in-process`` is one row a
   ``session.run`` here, the limit. Diagnostic rows: ``archipel wait=2`` (max_wait_ms 2: a batch waits for more)
   and ``archipel batch=1`` (no batching).
2. MLP 30-2048-2048-2048-2 (8.5 M float32 parameters, built in ONNX): archipel with max_batch 32, max_wait_ms 2 vs
   max_batch 1, at concurrency 32.
3. Cold start: spawn to first 200 of archipel's launcher vs ``python -c 'import onnxruntime'``, both after a run
   that fills a private bytecode cache (``PYTHONPYCACHEPREFIX``; these machines set ``PYTHONDONTWRITEBYTECODE``).
4. The gateway (``serving_gateway.py``): the GradientBoosting model deployed with one replica on a workspace's local
   site, driven open loop (requests sent on a clock at a fixed rate whatever the answers; latency from each one's
   scheduled send time) at half of ``archipel``'s req/s at concurrency 32, on four paths in turn: direct to the
   replica, through a bare byte relay on uvloop (``relay.py``: no HTTP, the floor of any Python proxy here),
   through nginx (Debian's package: ``proxy_pass`` to a ``keepalive 64`` upstream, one worker, no access log) and
   through archipel's gateway (bearer token checked, residency decided, forwarded), the same request bytes on
   each. Replica, relay, nginx and gateway on the server CPU; per row, their CPU per request from ``/proc``
   (nginx: its worker). Targets: the gateway adds <= 1 ms at p50 with 0 errors and costs less CPU per request
   than nginx.

    python benchmarks/serving.py [--duration 5] [--rounds 5] [--quick] [--json] [--out PATH]

``--quick``: 1 s per load point, the open loop at most 200 req/s, one cold start; without nginx the gateway part
skips nginx's row (the full run stops: ``make bench`` installs it). Exit code 1 if a server answered anything but
200 or other outputs than ONNX Runtime's.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import serving_gateway
import uvloop
from results import add_out_option, save
from serving_gateway import cpu_seconds, response_complete

from archipel.registry.convert import convert

CONCURRENCY = (1, 8, 32)
MLP_WIDTH = 2048
CLIENT_CPU, SERVER_CPU = 0, 1
QUICK_RATE = 200

LAUNCHER = """
import sys, time
onnx_path, signature_path, name, max_batch, max_wait_ms, counters_path = sys.argv[1:]
import json
from archipel.serving.replica import build_server
from archipel.serving.server import ModelServer, ServerConfig

config = ServerConfig()
if max_batch != "default":
    config.max_batch, config.max_wait_ms = int(max_batch), float(max_wait_ms)
with open(onnx_path, "rb") as f, open(signature_path) as s:
    app = build_server(f.read(), name, "1", json.load(s), config)
if counters_path != "-":  # calls, rows, model CPU seconds, in a file the benchmark reads
    import mmap
    import numpy as np
    with open(counters_path, "r+b") as f:
        counters = np.frombuffer(mmap.mmap(f.fileno(), 24), dtype=np.float64)
    predict = app.predict
    def timed(rows):
        start = time.thread_time()
        outputs = predict(rows)
        counters[0] += 1; counters[1] += len(rows); counters[2] += time.thread_time() - start
        return outputs
    app = ModelServer(app.info, timed, app.config)
from archipel.serving.http1 import listen
from archipel.serving.server import run_server  # exactly how archipel's replicas run
sock = listen("127.0.0.1", 0)
print("LISTENING", sock.getsockname()[1], flush=True)
run_server(app, sock)
"""

BASELINE_APP = """
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float | int]

class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor]

class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[Tensor]

DATATYPES = {"float32": "FP32", "int64": "INT64"}
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(os.environ["BASELINE_ONNX"], options, providers=["CPUExecutionProvider"])
output_names = [o.name for o in session.get_outputs()]
app = FastAPI()

@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: InferRequest) -> InferResponse:
    tensor = request.inputs[0]
    rows = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
    results = session.run(output_names, {tensor.name: rows})
    outputs = [
        Tensor(name=n, shape=list(r.shape), datatype=DATATYPES[str(r.dtype)], data=r.ravel().tolist())
        for n, r in zip(output_names, results)
    ]
    return InferResponse(model_name=name, model_version="1", id=request.id, outputs=outputs)
"""


class _Server(NamedTuple):
    proc: subprocess.Popen[str]
    port: int
    counters: Path | None


def _mlp_onnx(width: int) -> bytes:
    """30 -> width -> width -> width -> 2, ReLU after each hidden layer; He-scaled float32 weights, zero biases."""
    from onnx import TensorProto, helper, numpy_helper

    rng, sizes, nodes, weights, x = np.random.default_rng(0), [30, width, width, width, 2], [], [], "input"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) * np.sqrt(2 / n_in)).astype(np.float32)
        weights += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(n_out, "f4"), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"]))
        nodes.append(helper.make_node("Relu" if n_out == width else "Identity", [f"g{i}"], [x := f"h{i}"]))
    nodes[-1].output[0] = "output"
    io = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, d])
        for n, d in (("input", 30), ("output", 2))
    ]
    graph = helper.make_graph(nodes, "mlp", io[:1], io[1:], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _models(work: Path) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
    """The input rows; per model: its ONNX and signature files, an in-process session, its outputs on row 0."""
    import onnxruntime as ort
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    gbc = GradientBoostingClassifier(n_estimators=100, random_state=0).fit(X, y)
    models = {}
    for name, converted in (("cancer", convert(gbc, X[:64])), ("mlp", convert(_mlp_onnx(MLP_WIDTH), X[:64]))):
        (work / f"{name}.onnx").write_bytes(converted.onnx)
        (work / f"{name}.json").write_text(json.dumps(converted.signature))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # as archipel's replica
        session = ort.InferenceSession(converted.onnx, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        expected = dict(zip(names, session.run(names, {"input": X[:1]}), strict=True))
        files = {"onnx": work / f"{name}.onnx", "signature": work / f"{name}.json"}
        models[name] = {
            "name": name,
            **files,
            "session": session,
            "expected": expected,
            "converted": converted,
        }
    return X, models


def _request(name: str, row: np.ndarray, token: str | None = None) -> tuple[bytes, bytes]:
    """(the whole HTTP request, its JSON body): an OIP infer of one row, with a bearer token if given."""
    tensor = {"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row.tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    head = f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body, body


def _spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A process on the server CPU: it inherits the affinity of the thread that forks it."""
    pin = (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {SERVER_CPU})
    try:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    finally:
        if pin:
            os.sched_setaffinity(0, {CLIENT_CPU})


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()  # uvicorn shuts down on SIGTERM within a second
    proc.communicate(timeout=30)


def _first_200(
    proc: subprocess.Popen[str] | None, port: int, name: str, body: bytes, token: str | None = None
) -> bytes:
    """The body of the first 200 the server answers (polling every 2 ms); ``proc`` None: not our child."""
    deadline, headers = time.monotonic() + 60, {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", f"/v2/models/{name}/infer", body, headers)
            response = conn.getresponse()
            if response.status == 200:
                return response.read()
        except OSError:
            time.sleep(0.002)
        finally:
            conn.close()
    raise RuntimeError(f"the server on port {port} never answered 200 (exit code {proc and proc.poll()})")


def _archipel(
    model: dict[str, Any], batch: str, wait: str, counters: Path | None, env: Any = None
) -> _Server:
    if counters:
        counters.write_bytes(bytes(24))
    args = [str(model["onnx"]), str(model["signature"]), model["name"], batch, wait, str(counters or "-")]
    proc = _spawn([sys.executable, "-c", LAUNCHER, *args], env)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("LISTENING"):
        raise RuntimeError(f"archipel's launcher did not start: {line}{proc.communicate()[1]}")
    return _Server(proc, int(line.split()[1]), counters)


def _baseline(work: Path, model: dict[str, Any]) -> _Server:
    (work / "baseline_app.py").write_text(BASELINE_APP)
    with socket.socket() as sock:  # a free port, for uvicorn to bind
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [sys.executable, "-m", "uvicorn", "baseline_app:app", "--app-dir", str(work), "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
            "--no-access-log"]  # fmt: skip
    return _Server(_spawn(args, {**os.environ, "BASELINE_ONNX": str(model["onnx"])}), port, None)


def _cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of all threads: utime + stime; seconds the main thread waited, runnable, for its CPU)."""
    waited = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    return cpu_seconds(pid), waited


class _Connection(asyncio.Protocol):
    """One keep-alive connection of the closed loop: sends ``request`` again as soon as a response is complete."""

    def __init__(self, request: bytes) -> None:
        self.request, self.buffer, self.sent, self.stop_at, self.errors = request, b"", 0.0, 0.0, 0
        self.latencies: list[float] = []
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self, stop_at: float) -> asyncio.Future[None]:
        self.stop_at, self.latencies, self.errors = stop_at, [], 0
        self.done = asyncio.get_running_loop().create_future()
        self.buffer, self.sent = b"", time.perf_counter()
        self.transport.write(self.request)
        return self.done

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer = self.buffer + data
        if not response_complete(buffer):
            return
        now = time.perf_counter()
        self.latencies.append(now - self.sent)
        self.errors += not buffer.startswith(b"HTTP/1.1 200")
        if now < self.stop_at:
            self.buffer, self.sent = b"", time.perf_counter()
            self.transport.write(self.request)
        elif self.done is not None and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"the server closed the connection: {exc}"))


def _stats(ms: np.ndarray, seconds: float) -> dict[str, float]:
    p50, p99 = np.percentile(ms, [50, 99])
    return {"req_per_s": round(len(ms) / seconds, 1), "p50_ms": round(p50, 4), "p99_ms": round(p99, 4)}


async def _closed_loop(server: _Server, request: bytes, clients: int, seconds: float, warmup: float) -> dict:
    loop, pid = asyncio.get_running_loop(), server.proc.pid
    conns = [_Connection(request) for _ in range(clients)]
    for conn in conns:
        await loop.create_connection(lambda conn=conn: conn, "127.0.0.1", server.port)
    await asyncio.gather(*(c.start(time.perf_counter() + warmup) for c in conns))
    before = server.counters.read_bytes() if server.counters else b""
    (cpu0, runq0), client0, start = _cpu(pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(c.start(start + seconds) for c in conns))
    elapsed, client, (cpu, runq) = time.perf_counter() - start, time.process_time() - client0, _cpu(pid)
    for conn in conns:
        conn.transport.close()
    n = sum(len(c.latencies) for c in conns)
    row = {"concurrency": clients, "requests": n, "errors": sum(c.errors for c in conns), "seconds": elapsed}
    row |= _stats(np.array([lat for c in conns for lat in c.latencies]) * 1e3, elapsed)
    row["server_cpu_us_per_req"] = round((cpu - cpu0) / n * 1e6, 2)
    row["server_cpu_pct"] = round((cpu - cpu0) / elapsed * 100, 1)
    row["server_runq_pct"] = round((runq - runq0) / elapsed * 100, 1)
    row["client_cpu_pct"] = round(client / elapsed * 100, 1)
    if server.counters:
        calls, rows, model_s = np.frombuffer(server.counters.read_bytes()) - np.frombuffer(before)
        row |= {"batch_rows_mean": round(rows / calls, 2), "model_us_per_req": round(model_s / n * 1e6, 2)}
        row["other_us_per_req"] = round(row["server_cpu_us_per_req"] - row["model_us_per_req"], 2)
    return row


def _in_process(session: Any, rows: np.ndarray, duration: float) -> dict[str, Any]:
    """ONNX Runtime on ``rows`` in this process, called again and again for ``duration`` seconds."""
    names = [o.name for o in session.get_outputs()]
    for _ in range(20):
        session.run(names, {"input": rows})
    times, cpu0, stop = [], time.process_time(), time.perf_counter() + duration
    while (start := time.perf_counter()) < stop:
        session.run(names, {"input": rows})
        times.append(time.perf_counter() - start)
    cpu = round((time.process_time() - cpu0) / len(times) * 1e6, 2)
    return {
        "rows": len(rows),
        "calls": len(times),
        **_stats(np.array(times) * 1e3, sum(times)),
        "cpu_us": cpu,
    }


def _cold_start(model: dict[str, Any], body: bytes, rounds: int, cache: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)

    def ort_import() -> float:
        start = time.perf_counter()
        _spawn([sys.executable, "-c", "import onnxruntime"], env).communicate()
        return time.perf_counter() - start

    def archipel() -> tuple[float, float]:
        start = time.perf_counter()
        server = _archipel(model, "default", "2", None, env)
        listening = time.perf_counter() - start
        _first_200(server.proc, server.port, model["name"], body)
        ready = time.perf_counter() - start
        _stop(server.proc)
        return listening, ready

    ort_import(), archipel()  # fill the bytecode cache and the page cache
    runs = [(ort_import(), *archipel()) for _ in range(rounds)]
    ort_s, listening_s, ready_s = (round(statistics.median(r[i] for r in runs), 4) for i in range(3))
    return {"rounds": rounds, "import_onnxruntime_s": ort_s, "archipel_listening_s": listening_s,
            "archipel_first_prediction_s": ready_s, "ratio": round(ready_s / ort_s, 2)}  # fmt: skip


def _break_even(batched: dict[str, Any], alone: dict[str, Any], mlp: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-row model time above which batching pays (see ``formula``): h1 and q from the GradientBoosting
    rows at concurrency 32, where the model costs next to nothing; r from the MLP rows."""
    h1, q = alone["other_us_per_req"], batched["other_us_per_req"] - alone["other_us_per_req"]
    r = mlp[0]["model_us_per_req"] / mlp[1]["model_us_per_req"]
    return {
        "h1_us": h1,
        "q_us": round(q, 2),
        "r": round(r, 4),
        "break_even_model_us": round(max(q, 0.0) / (1 - r), 1) if r < 1 else None,
        "double_model_us": round((h1 + 2 * q) / (1 - 2 * r), 1) if r < 0.5 else None,
        "formula": "server CPU per request: unbatched h1 + m, batched h1 + q + r*m (h1: CPU outside the model "
        "unbatched, q: what batching adds to it, m: model time of one row alone, r: model time per row in a batch "
        "/ alone); batching pays when m*(1 - r) > q, i.e. m > q / (1 - r), and doubles a saturated server's "
        "throughput when m > (h1 + 2q) / (1 - 2r); this is CPU only: at low load batching costs latency instead, "
        "up to max_wait_ms a request",
    }


def _same_outputs(data: bytes, expected: dict[str, np.ndarray]) -> bool:
    outputs = {o["name"]: np.reshape(o["data"], o["shape"]) for o in json.loads(data)["outputs"]}
    return all(np.allclose(outputs[k], v, atol=1e-4) for k, v in expected.items())


def _through_proxies(args: argparse.Namespace, work: Path, model: dict[str, Any], row: np.ndarray, max_rate: float,
                     loop: asyncio.AbstractEventLoop) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """One replica at half ``max_rate``, open loop: direct, through nginx if installed, through archipel's gateway;
    the same request bytes (bearer token included) on every path. (figures, every answer right?)"""
    rate = round(min(max_rate / 2, QUICK_RATE) if args.quick else max_rate / 2)
    nginx = serving_gateway.nginx_version()
    with serving_gateway.paths(work, model["converted"], SERVER_CPU, nginx is not None) as p:
        request, body = _request(model["name"], row, p.token)
        targets = p.targets()
        ok = all(_same_outputs(_first_200(s.proc, s.port, model["name"], body, p.token), model["expected"])
                 for s, _ in targets.values())  # fmt: skip
        rounds: dict[str, list[dict[str, Any]]] = {label: [] for label in targets}
        for _ in range(
            args.proxy_rounds
        ):  # the paths take turns, so a noisy moment does not land on one path
            for label, (server, pids) in targets.items():
                measured = serving_gateway.open_loop(
                    server.port, request, rate, args.duration, args.warmup, pids
                )
                rounds[label].append(loop.run_until_complete(measured))
        rows = [
            {"path": label, **serving_gateway.median_round(measured)} for label, measured in rounds.items()
        ]
    ok &= all(r["non_200"] == 0 for r in rows)
    return serving_gateway.summarize(rows, rate, max_rate, nginx or serving_gateway.NGINX_MISSING), ok


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    X, models = _models(work)
    loop, ok = uvloop.new_event_loop(), True

    def measure(servers: dict[str, _Server], name: str, levels: tuple[int, ...]) -> list[dict[str, Any]]:
        """Every server at every level, taking turns at each level; each checked against ORT's outputs first."""
        nonlocal ok
        request, body = _request(name, X[0])
        rows = []
        try:
            for server in servers.values():
                ok &= _same_outputs(
                    _first_200(server.proc, server.port, name, body), models[name]["expected"]
                )
            for level in levels:
                for label, server in servers.items():
                    row = _closed_loop(server, request, level, args.duration, args.warmup)
                    rows.append({"server": label, **loop.run_until_complete(row)})
        finally:
            for server in servers.values():
                _stop(server.proc)
        ok &= all(row["errors"] == 0 for row in rows)
        return rows

    cancer, mlp = models["cancer"], models["mlp"]
    servers = {
        "archipel": _archipel(cancer, "default", "2", work / "c1"),
        "fastapi+ort": _baseline(work, cancer),
    }
    servers["archipel wait=2"] = _archipel(cancer, "64", "2", work / "c2")
    servers["archipel batch=1"] = _archipel(cancer, "1", "0", work / "c3")
    http_rows = measure(servers, "cancer", CONCURRENCY)
    servers = {"mlp batch=32": _archipel(mlp, "32", "2", work / "c4")}
    servers["mlp batch=1"] = _archipel(mlp, "1", "0", work / "c5")
    batch_rows = measure(servers, "mlp", (32,))
    by = {(row["server"], row["concurrency"]): row for row in http_rows}
    ratios = []
    for c in CONCURRENCY:
        mine, base = by["archipel", c], by["fastapi+ort", c]
        ratio, p99 = mine["req_per_s"] / base["req_per_s"], mine["p99_ms"] / base["p99_ms"]
        ratios.append({"concurrency": c, "req_per_s": round(ratio, 2), "p99": round(p99, 2)})
    top = CONCURRENCY[-1]
    gateway, gateway_ok = _through_proxies(args, work, cancer, X[0], by["archipel", top]["req_per_s"], loop)
    return {
        "http": http_rows,
        "in_process": {"server": "ort in-process", **_in_process(cancer["session"], X[:1], args.duration)},
        "ratios": ratios,
        "gateway": gateway,
        "batching": {
            "rows": batch_rows,
            "mlp_width": MLP_WIDTH,
            "in_process": [_in_process(mlp["session"], X[:n], args.duration / 2) for n in (1, 32)],
            "ratio": round(batch_rows[0]["req_per_s"] / batch_rows[1]["req_per_s"], 2),
            "break_even": _break_even(by["archipel", top], by["archipel batch=1", top], batch_rows),
        },
        "cold_start": _cold_start(cancer, _request("cancer", X[0])[1], args.rounds, work / "pycache"),
        "predictions_ok": bool(ok and gateway_ok),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="seconds per load point (default 5, 1 with --quick)")
    parser.add_argument("--rounds", type=int, help="cold-start rounds (default 5, 1 with --quick)")
    parser.add_argument(
        "--proxy-rounds", type=int, help="turns of the proxy paths at a fixed rate (default 3, 1 quick)"
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke mode: 1 s a load point, 1 cold start")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    add_out_option(parser, "serving")
    args = parser.parse_args()
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.warmup = 0.2 if args.quick else 0.5
    args.rounds = max(1, args.rounds or (1 if args.quick else 5))
    args.proxy_rounds = max(1, args.proxy_rounds or (1 if args.quick else 3))
    if not args.quick and serving_gateway.nginx_version() is None:
        print(
            f"nginx: {serving_gateway.NGINX_MISSING}; the full run compares the gateway with it",
            file=sys.stderr,
        )
        return 2
    load, pinned = os.getloadavg()[0], (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {CLIENT_CPU})
    with tempfile.TemporaryDirectory(prefix="archipel-bench-") as tmp:
        measured = run(args, Path(tmp))
    result = {"quick": args.quick, "duration_s": args.duration, "cpus": os.cpu_count(), "pinned": pinned,
              "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), **measured}  # fmt: skip
    save("serving", result, quick=args.quick, out=args.out)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0 if result["predictions_ok"] else 1


COLUMNS = [  # header, row key, width (negative: left-aligned), decimals
    ("server", "server", -17, None), ("conc", "concurrency", 5, None), ("req/s", "req_per_s", 8, 0),
    ("p50 ms", "p50_ms", 8, 2), ("p99 ms", "p99_ms", 8, 2), ("srv us/req", "server_cpu_us_per_req", 11, 1),
    ("srv CPU%", "server_cpu_pct", 9, 1), ("runq%", "server_runq_pct", 7, 1), ("client%", "client_cpu_pct", 8, 1),
    ("batch", "batch_rows_mean", 7, 1), ("model us", "model_us_per_req", 9, 1),
]  # fmt: skip
GATEWAY_COLUMNS = [
    ("path", "path", -9, None), ("req/s", "req_per_s", 8, 0), ("p50 ms", "p50_ms", 10, 2),
    ("p99 ms", "p99_ms", 10, 2), ("errors", "errors", 7, None), ("lag p99 ms", "lag_p99_ms", 11, 2),
    ("replica us/req", "replica_cpu_us_per_req", 15, 1), ("replica CPU%", "replica_cpu_pct", 13, 1),
    ("proxy us/req", "proxy_cpu_us_per_req", 13, 1), ("proxy CPU%", "proxy_cpu_pct", 11, 1),
]  # fmt: skip


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str, int, int | None]]) -> None:
    for i, row in enumerate([{key: head for head, key, _, _ in columns}, *rows]):
        cells = [
            (row[k] if i == 0 or d is None else f"{row[k]:.{d}f}") if k in row else ""
            for _, k, _, d in columns
        ]
        print(
            "".join(
                f"{cell:{'<' if w < 0 else '>'}{abs(w)}}"
                for cell, (_, _, w, _) in zip(cells, columns, strict=True)
            )
        )


def _print(result: dict[str, Any]) -> None:
    b, c, lim = result["batching"], result["cold_start"], result["in_process"]
    print(
        f"closed loop, {result['duration_s']:g} s per load point, raw latencies; client on CPU {CLIENT_CPU}, "
        f"servers on CPU {SERVER_CPU}{'' if result['pinned'] else ' (NOT pinned)'}; {result['cpus']} CPUs, "
        f"load average {result['load_before']:.2f} before, {result['load_after']:.2f} after"
    )
    lim_row = {**lim, "concurrency": "-", "server_cpu_us_per_req": lim["cpu_us"]}
    _table([*result["http"], lim_row, *b["rows"]], COLUMNS)
    print("ort in-process: one row a session.run in the client process")
    for r in result["ratios"]:
        print(
            f"archipel / fastapi+ort at concurrency {r['concurrency']}: {r['req_per_s']:.2f}x req/s, p99 {r['p99']}x"
        )
    met = result["ratios"][-1]["req_per_s"] >= 2 and result["ratios"][-1]["p99"] < 1
    print(f"target at concurrency 32 (>= 2x req/s and a lower p99): {'MET' if met else 'MISSED'}")
    _print_gateway(result["gateway"], result["quick"])
    (one, many), be = b["in_process"], b["break_even"]
    print(
        f"MLP 30-{b['mlp_width']}x3-2 in-process: 1 row {one['p50_ms']:.3f} ms, 32 rows {many['p50_ms']:.3f} ms; "
        f"mlp batch=32 / batch=1 at concurrency 32: {b['ratio']:.2f}x req/s (target >= 3x: "
        f"{'MET' if b['ratio'] >= 3 else 'MISSED'})\nbreak-even: {be['formula']}"
    )
    print(
        f"  measured h1 = {be['h1_us']:.1f} us, q = {be['q_us']:.1f} us, r = {be['r']:.3f}: batching pays above "
        f"m = {be['break_even_model_us']} us a row{' (q <= 0: any model)' if be['q_us'] <= 0 else ''}, doubles "
        f"throughput above m = {be['double_model_us']} us (GradientBoosting: m = {lim['cpu_us']:.1f} us; MLP: "
        f"m = {b['rows'][1]['model_us_per_req']:.0f} us)"
    )
    print(
        f"cold start (median of {c['rounds']}): python -c 'import onnxruntime' {c['import_onnxruntime_s'] * 1e3:.0f}"
        f" ms; archipel launcher listening {c['archipel_listening_s'] * 1e3:.0f} ms, first prediction "
        f"{c['archipel_first_prediction_s'] * 1e3:.0f} ms: {c['ratio']:.2f}x (target <= 2x: "
        f"{'MET' if c['ratio'] <= 2 else 'MISSED'})\npredictions equal to ONNX Runtime's, every response 200: "
        f"{'yes' if result['predictions_ok'] else 'NO'}"
    )


def _print_gateway(g: dict[str, Any], quick: bool) -> None:
    cap = f", capped at {QUICK_RATE} with --quick" if quick and g["rate_req_per_s"] == QUICK_RATE else ""
    print(
        f"\nopen loop at {g['rate_req_per_s']} req/s (half of archipel's {g['max_req_per_s']:.0f} req/s at "
        f"concurrency 32{cap}) on {g['connections']} connections, the client spinning between sends; latency "
        f"from each request's {g['latency_from']} (lag: scheduled to written); replica, relay, gateway, nginx on "
        f"CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}"
    )
    _table(g["rows"], GATEWAY_COLUMNS)
    by, targets = {r["path"]: r for r in g["rows"]}, g["targets"]
    if "nginx" not in by:
        print(f"nginx: {g['nginx']}")
    added = [f"{k} {'no answer' if ms is None else f'{ms:+.2f} ms'}" for k, ms in g["added_p50_ms"].items()]
    cpu = [f"{k} {by[k]['proxy_cpu_us_per_req']:.1f} us" for k in g["added_p50_ms"]]
    turns = [
        f"{k} " + " ".join(f"{v:.1f}" for v in by[k]["proxy_cpu_us_per_req_rounds"])
        for k in g["added_p50_ms"]
    ]
    print(
        f"added p50: {', '.join(added)}; target (gateway adds <= 1 ms, 0 errors): {targets['gateway_added_p50']}\n"
        f"proxy CPU per request (median of {g['rows'][0]['rounds']} turns): {', '.join(cpu)} (each turn: "
        f"{'; '.join(turns)})\ntarget (gateway below nginx): "
        f"{targets['gateway_cpu_below_nginx']} (relay: bytes copied both ways on uvloop, no HTTP: the floor of any "
        f"proxy on this event loop)\n"
    )


if __name__ == "__main__":
    sys.exit(main())
