"""The model server: one replica of one model version, speaking the Open Inference Protocol v2 over REST.

A request handler on :mod:`archipel.serving.http1` (uvloop and httptools, callbacks, no web framework):

- ``GET /v2/health/live``, ``/v2/health/ready`` (public), ``GET /v2``, ``GET /v2/models/{m}[/versions/{v}]``,
  ``…/ready``, ``POST …/infer``, ``GET /metrics`` (Prometheus text).
- Replicas take traffic only from gateways: every route but health needs the header ``X-Archipel-Replica-Secret``
  when the server has a secret (constant-time compare), and a server without one binds loopback only.
- A body larger than ``max_body_bytes`` is refused with 413 from its ``Content-Length`` before it is read, or as
  soon as the bytes read pass the limit; bad JSON and bad tensors are 400 with a message; a failing model is 500;
  nothing a client sends stops the server.
- Concurrent requests are batched: each infer waits at most ``max_wait_ms`` for others, up to ``max_batch`` rows
  go to ONNX Runtime in one call, and each request gets its own rows back. Requests a gateway pipelines on one
  connection are batched the same way, and their answers leave in one write.
- ``X-Request-Id`` (or one made up) and ``traceparent`` are echoed and logged.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from archipel.serving.http1 import JSON, Request, ServerConnection, serve
from archipel.serving.metrics import Metrics
from archipel.serving.oip import BadRequest, ModelInfo, infer_response, metadata, parse_infer
from archipel.serving.sampling import Sampler

__all__ = ["Batcher", "ModelServer", "ServerConfig", "run_server"]

log = logging.getLogger("archipel.serving")
Answer = Callable[[dict[str, np.ndarray] | None, Exception | None], None]
_TEXT = b"content-type: text/plain; version=0.0.4\r\n"


@dataclass
class ServerConfig:
    max_body_bytes: int = 8 * 2**20
    max_batch: int = 64
    max_wait_ms: float = 0.0
    """0: batch what is already queued, never wait (see Batcher._run)."""
    secret: str | None = None
    """Shared with the gateways; None means loopback-only (enforced by whoever binds the socket)."""


class Batcher:
    """Dynamic micro-batching in front of a ``predict(rows) -> {output: array}`` function (rows on axis 0).

    ``submit(rows, answer)`` queues the rows; ``answer(outputs, error)`` is called with this request's own rows of
    the outputs (or the exception the model raised). The batch runs at the end of the event loop's turn in which
    its first request arrived, so it takes every request received in that turn (whatever one read brought in:
    concurrent connections, pipelined requests) up to ``max_batch`` rows; only with ``max_wait_ms`` > 0 does it
    wait longer for more (worth it for models whose row costs far more than a request's HTTP handling)."""

    def __init__(self, predict: Callable[[np.ndarray], dict[str, np.ndarray]], max_batch: int, max_wait_ms: float,
                 metrics: Metrics | None = None) -> None:  # fmt: skip
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.metrics = metrics
        self.queue: collections.deque[tuple[np.ndarray, Answer]] = collections.deque()
        self._rows = 0
        self._due: asyncio.Handle | asyncio.TimerHandle | None = None

    def submit(self, rows: np.ndarray, answer: Answer) -> None:
        self.queue.append((rows, answer))
        self._rows += len(rows)
        loop = asyncio.get_running_loop()
        if self._rows >= self.max_batch:
            if self._due is not None:
                self._due.cancel()
            self._due = loop.call_soon(self._run)
        elif self._due is None:
            self._due = (
                loop.call_later(self.max_wait, self._run) if self.max_wait > 0 else loop.call_soon(self._run)
            )

    def _run(self) -> None:
        self._due = None
        while self.queue:
            batch, size = [], 0
            while self.queue and (not batch or size + len(self.queue[0][0]) <= self.max_batch):
                item = self.queue.popleft()
                batch.append(item)
                size += len(item[0])
            self._rows -= size
            self._execute(batch)
            if self.max_wait > 0 and self._rows < self.max_batch:
                break  # the rest waits for company, as the first did
        if self.queue and self._due is None:
            self._due = asyncio.get_running_loop().call_later(self.max_wait, self._run)

    def _execute(self, batch: list[tuple[np.ndarray, Answer]]) -> None:
        rows = batch[0][0] if len(batch) == 1 else np.concatenate([b[0] for b in batch])
        if self.metrics is not None:
            self.metrics.batch(len(rows))
        try:
            outputs = self.predict(rows)
        except Exception as exc:  # the model failed: every request of the batch gets the error
            for _, answer in batch:
                answer(None, exc)
            return
        start = 0
        for part, answer in batch:
            end = start + len(part)
            answer({k: v[start:end] for k, v in outputs.items()}, None)
            start = end


@dataclass
class ModelServer:
    """The request handler for one loaded model (see the module docstring); :func:`run_server` serves it."""

    info: ModelInfo
    predict: Callable[[np.ndarray], dict[str, np.ndarray]]
    config: ServerConfig = field(default_factory=ServerConfig)
    metrics: Metrics = field(default_factory=Metrics)
    sampler: Sampler | None = None

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.predict, self.config.max_batch, self.config.max_wait_ms, self.metrics)
        base = f"/v2/models/{self.info.name}"
        self._model_paths = {base, f"{base}/versions/{self.info.version}"}
        self._secret = self.config.secret.encode() if self.config.secret else None
        self._metadata = orjson.dumps(metadata(self.info), option=orjson.OPT_SERIALIZE_NUMPY)
        self._ready = orjson.dumps({"name": self.info.name, "ready": True})

    def handle(self, conn: ServerConnection, request: Request) -> None:
        headers = request.headers
        given = headers.get(b"x-request-id")
        request_id = given[:128].decode("latin-1") if given else secrets.token_hex(8)
        extra = b"x-request-id: %s\r\n" % request_id.encode("latin-1")
        if b"traceparent" in headers:
            extra += b"traceparent: %s\r\n" % headers[b"traceparent"][:128]
        path, method = request.path, request.method
        if path == "/v2/health/live":
            return conn.respond(request, 200, b'{"live":true}', JSON + extra)
        if path == "/v2/health/ready":
            return conn.respond(request, 200, b'{"ready":true}', JSON + extra)
        if self._secret is not None and not self._from_gateway(headers):
            body = b'{"error":"this replica takes traffic from gateways only"}'
            return conn.respond(request, 401, body, JSON + extra)
        if path == "/metrics" and method == "GET":
            return conn.respond(request, 200, self.metrics.render().encode(), _TEXT + extra)
        if path == "/v2" and method == "GET":
            return conn.respond(
                request, 200, b'{"name":"archipel","version":"2","extensions":[]}', JSON + extra
            )
        if path in self._model_paths and method == "GET":
            return conn.respond(request, 200, self._metadata, JSON + extra)
        if path.endswith("/ready") and path[:-6] in self._model_paths:
            return conn.respond(request, 200, self._ready, JSON + extra)
        if path.endswith("/infer") and path[:-6] in self._model_paths:
            if method != "POST":
                return conn.respond(request, 405, b'{"error":"infer takes POST"}', JSON + extra)
            return self._infer(conn, request, request_id, JSON + extra)
        if path.startswith("/v2/models/"):
            message = {"error": f"this server serves {self.info.name} version {self.info.version}"}
            return conn.respond(request, 404, orjson.dumps(message), JSON + extra)
        return conn.respond(request, 404, orjson.dumps({"error": f"no route {path}"}), JSON + extra)

    def _from_gateway(self, headers: dict[bytes, bytes]) -> bool:
        """The secret in ``X-Archipel-Replica-Secret`` (gateways) or as a bearer token (Prometheus scrapes)."""
        assert self._secret is not None
        given = headers.get(b"x-archipel-replica-secret")
        if given is None:
            authorization = headers.get(b"authorization", b"")
            given = authorization[7:].strip() if authorization[:7].lower() == b"bearer " else b""
        return hmac.compare_digest(given, self._secret)

    def _infer(self, conn: ServerConnection, request: Request, request_id: str, headers: bytes) -> None:
        started = time.perf_counter()
        try:
            rows, given_id = parse_infer(orjson.loads(request.body), self.info)
        except orjson.JSONDecodeError:
            return self._done(conn, request, request_id, started, 400, {"error": "the request body is not valid JSON"},
                              headers)  # fmt: skip
        except BadRequest as exc:
            return self._done(conn, request, request_id, started, 400, {"error": str(exc)}, headers)
        answer_id = given_id or request_id
        if len(rows) == 0:
            outputs = {o["name"]: np.zeros((0,), dtype=np.float32) for o in self.info.outputs}
            return self._done(conn, request, request_id, started, 200, infer_response(self.info, outputs, answer_id),
                              headers)  # fmt: skip
        self.metrics.in_flight += 1

        def answer(outputs: dict[str, np.ndarray] | None, error: Exception | None) -> None:
            self.metrics.in_flight -= 1
            if outputs is None:
                log.error("request %s: inference failed: %s", request_id, error)
                payload = {"error": f"inference failed: {type(error).__name__}"}
                return self._done(conn, request, request_id, started, 500, payload, headers)
            self._done(conn, request, request_id, started, 200, infer_response(self.info, outputs, answer_id),
                       headers)  # fmt: skip
            if self.sampler is not None and self.sampler.add(rows, outputs, answer_id):
                asyncio.get_running_loop().run_in_executor(None, self.sampler.flush)

        self.batcher.submit(rows, answer)

    def _done(self, conn: ServerConnection, request: Request, request_id: str, started: float, status: int,
              payload: Any, headers: bytes) -> None:  # fmt: skip
        conn.respond(request, status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), headers)
        self.metrics.request(self.info.name, self.info.version, status, time.perf_counter() - started)
        if status >= 400:
            log.warning("request %s: %s", request_id, status)
        elif log.isEnabledFor(logging.DEBUG):  # per-request lines cost; on when asked (log level debug)
            log.debug("request %s: %s in %.2f ms", request_id, status, (time.perf_counter() - started) * 1000)

    async def flush_samples(self) -> None:
        if self.sampler is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.sampler.flush)


def run_server(server: ModelServer, sock: socket.socket) -> None:
    """Serve ``server`` on the listening ``sock`` until SIGTERM or SIGINT: requests in progress are answered and
    the samples flushed before it returns."""
    import uvloop

    uvloop.run(
        serve(server.handle, sock, max_body=server.config.max_body_bytes, on_stop=server.flush_samples)
    )
