"""The model server: one replica of one model version, speaking the Open Inference Protocol v2 over REST.

A bare ASGI application (no web framework in the hot path) run by uvicorn with uvloop and httptools:

- ``GET /v2/health/live``, ``/v2/health/ready`` (public), ``GET /v2``, ``GET /v2/models/{m}[/versions/{v}]``,
  ``…/ready``, ``POST …/infer``, ``GET /metrics`` (Prometheus text).
- Replicas take traffic only from gateways: every route but health needs the header ``X-Archipel-Replica-Secret``
  when the server has a secret (constant-time compare), and a server without one binds loopback only.
- A body larger than ``max_body_bytes`` is refused with 413 from its ``Content-Length`` before it is read, or as
  soon as the bytes read pass the limit; bad JSON and bad tensors are 400 with a message; a failing model is 500;
  nothing a client sends stops the server.
- Concurrent requests are batched: each infer waits at most ``max_wait_ms`` for others, up to ``max_batch`` rows
  go to ONNX Runtime in one call, and each request gets its own rows back.
- ``X-Request-Id`` (or one made up) and ``traceparent`` are echoed and logged.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from archipel.serving.asgi import Receive, Send, read_body
from archipel.serving.metrics import Metrics
from archipel.serving.oip import BadRequest, ModelInfo, infer_response, metadata, parse_infer
from archipel.serving.sampling import Sampler

__all__ = ["Batcher", "ModelServer", "ServerConfig"]

log = logging.getLogger("archipel.serving")
_JSON = [(b"content-type", b"application/json")]


@dataclass
class ServerConfig:
    max_body_bytes: int = 8 * 2**20
    max_batch: int = 64
    max_wait_ms: float = 0.0
    """0: batch what is already queued, never wait (see Batcher._run)."""
    secret: str | None = None
    """Shared with the gateways; None means loopback-only (enforced by whoever binds the socket)."""


class Batcher:
    """Dynamic micro-batching in front of a ``predict(rows) -> {output: array}`` function (rows on axis 0)."""

    def __init__(self, predict: Callable[[np.ndarray], dict[str, np.ndarray]], max_batch: int, max_wait_ms: float,
                 metrics: Metrics | None = None) -> None:  # fmt: skip
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.metrics = metrics
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[dict[str, np.ndarray]]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((rows, future))
        return await future

    async def _run(self) -> None:
        """Take the first waiting request, let the requests already received reach the queue (one yield), take
        all of them up to ``max_batch`` rows; only with ``max_wait_ms`` > 0 wait longer for more (worth it for
        models whose row costs far more than a request's HTTP handling)."""
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            batch, size = [first], len(first[0])
            await asyncio.sleep(0)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                if not self.queue.empty():
                    item = self.queue.get_nowait()
                elif self.max_wait > 0 and (left := deadline - loop.time()) > 0:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                else:
                    break
                batch.append(item)
                size += len(item[0])
            self._execute(batch)

    def _execute(self, batch: list[tuple[np.ndarray, asyncio.Future[dict[str, np.ndarray]]]]) -> None:
        rows = batch[0][0] if len(batch) == 1 else np.concatenate([b[0] for b in batch])
        if self.metrics is not None:
            self.metrics.batch(len(rows))
        try:
            outputs = self.predict(rows)
        except Exception as exc:  # the model failed: every request of the batch gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for part, future in batch:
            end = start + len(part)
            if not future.done():
                future.set_result({k: v[start:end] for k, v in outputs.items()})
            start = end


@dataclass
class ModelServer:
    """The ASGI application for one loaded model (see the module docstring)."""

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

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
            if self.sampler is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.sampler.flush)
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or secrets.token_hex(8)
        extra = [(b"x-request-id", request_id.encode("latin-1"))]
        if b"traceparent" in headers:
            extra.append((b"traceparent", headers[b"traceparent"][:128]))
        path, method = scope["path"], scope["method"]
        if path == "/v2/health/live":
            return await self._json(send, 200, {"live": True}, extra)
        if path == "/v2/health/ready":
            return await self._json(send, 200, {"ready": True}, extra)
        if self._secret is not None:
            given = headers.get(b"x-archipel-replica-secret", b"")
            if not hmac.compare_digest(given, self._secret):
                return await self._json(
                    send, 401, {"error": "this replica takes traffic from gateways only"}, extra
                )
        if path == "/metrics" and method == "GET":
            body = self.metrics.render().encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; version=0.0.4"), *extra]})  # fmt: skip
            return await send({"type": "http.response.body", "body": body})
        if path == "/v2" and method == "GET":
            return await self._json(send, 200, {"name": "archipel", "version": "2", "extensions": []}, extra)
        if path in self._model_paths and method == "GET":
            return await self._json(send, 200, metadata(self.info), extra)
        if path.endswith("/ready") and path.removesuffix("/ready") in self._model_paths:
            return await self._json(send, 200, {"name": self.info.name, "ready": True}, extra)
        if path.endswith("/infer") and path.removesuffix("/infer") in self._model_paths:
            if method != "POST":
                return await self._json(send, 405, {"error": "infer takes POST"}, extra)
            return await self._infer(receive, send, headers, request_id, extra)
        if path.startswith("/v2/models/"):
            return await self._json(
                send,
                404,
                {"error": f"this server serves {self.info.name} version {self.info.version}"},
                extra,
            )
        return await self._json(send, 404, {"error": f"no route {path}"}, extra)

    async def _infer(self, receive: Receive, send: Send, headers: dict[bytes, bytes], request_id: str,
                     extra: list[tuple[bytes, bytes]]) -> None:  # fmt: skip
        started = time.perf_counter()
        self.metrics.in_flight += 1
        status = 200
        try:
            body = await self._body(receive, headers)
            if isinstance(body, int):
                status = body
                message = (
                    "the request body is too large" if body == 413 else "the request body is not valid JSON"
                )
                return await self._json(send, status, {"error": message}, extra)
            try:
                rows, given_id = parse_infer(body, self.info)
            except BadRequest as exc:
                status = 400
                return await self._json(send, 400, {"error": str(exc)}, extra)
            if len(rows) == 0:
                outputs = {o["name"]: np.zeros((0,), dtype=np.float32) for o in self.info.outputs}
            else:
                try:
                    outputs = await self.batcher.submit(rows)
                except Exception as exc:  # the model itself failed
                    status = 500
                    log.error("request %s: inference failed: %s", request_id, exc)
                    return await self._json(
                        send, 500, {"error": f"inference failed: {type(exc).__name__}"}, extra
                    )
            await self._json(send, 200, infer_response(self.info, outputs, given_id or request_id), extra)
            if (
                self.sampler is not None
                and len(rows)
                and self.sampler.add(rows, outputs, given_id or request_id)
            ):
                asyncio.get_running_loop().run_in_executor(None, self.sampler.flush)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.request(self.info.name, self.info.version, status, time.perf_counter() - started)
            if status >= 400:
                log.warning("request %s: %s", request_id, status)
            elif log.isEnabledFor(logging.DEBUG):  # per-request lines cost; on when asked (log level debug)
                log.debug(
                    "request %s: %s in %.2f ms", request_id, status, (time.perf_counter() - started) * 1000
                )

    async def _body(self, receive: Receive, headers: dict[bytes, bytes]) -> Any:
        """The decoded JSON body, or 413/400 (the body is not read past the limit)."""
        raw = await read_body(receive, headers, self.config.max_body_bytes)
        if raw is None:
            return 413
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return 400

    @staticmethod
    async def _json(send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]]) -> None:
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        await send({"type": "http.response.start", "status": status, "headers": [*_JSON, *extra]})
        await send({"type": "http.response.body", "body": body})
