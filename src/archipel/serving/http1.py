"""The HTTP/1.1 layer of archipel's model servers and gateways, on asyncio Protocols (uvloop) and httptools
(llhttp): callbacks, no coroutine or ASGI cycle per request.

Server side (:class:`HTTPServer`, :class:`ServerConnection`): keep-alive; pipelined requests are all handed to the
handler at once and answered in order, the answers that are ready together going out in one write (this is what
lets a gateway multiplex many requests on one connection to a replica, and the replica batch them); chunked
bodies; ``Expect: 100-continue``; a body over the limit refused with 413 from its Content-Length before it is read
(or as soon as a chunked body passes it); malformed requests 400; heads over 64 KiB 431; idle keep-alive
connections closed after ``keepalive_s``; a request whose head or body stalls gets 408 after
``request_timeout_s``; a client that does not read its answers stops being read.

Client side (:class:`UpstreamPool`): connections to one replica. A request to an idle replica goes straight out;
requests made while the replica is answering on the connection written last wait for those answers (up to
:data:`HOLD`) and leave with their arrival, together in one write (HTTP/1.1 pipelining, answered in order, up to
:data:`PIPELINE` in flight on one connection); otherwise an idle connection is preferred, then a new one up to
``max_connections``, then the least loaded. Each request has a deadline: :meth:`UpstreamPool.expire` aborts a
connection whose oldest request is past it, failing every request on it, and sends requests held too long.
Fewer writes and reads is the point: on loopback each system call costs more than the gateway's own work.

Why not ASGI and an HTTP client library: the gateway's whole job is one parse, one decision and one copy a
request; uvicorn's ASGI cycle and aiohttp's client cost it 230 us of CPU a request (``benchmarks/serving.py``),
and every request paid its own system calls both ways.

This module runs as it is, and is also compiled by Cython in pure Python mode (types in ``http1.pxd``) by
``scripts/build_native.py``; the compiled twin replaces it at import when it was built from these very sources
(:mod:`archipel.serving._native`; ``ARCHIPEL_PURE_PYTHON=1`` keeps the Python).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

__all__ = ["HTTPServer", "Request", "ServerConnection", "UpstreamPool", "listen", "response_head", "serve"]

log = logging.getLogger("archipel.http")

REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
           405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
           431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 502: b"Bad Gateway",
           503: b"Service Unavailable", 504: b"Gateway Timeout"}  # fmt: skip
JSON = b"content-type: application/json\r\n"
MAX_HEAD_BYTES = 64 * 1024
MAX_PIPELINED = 128
KEEP_ALIVE_1_0 = 2
"""``Request.keep_alive`` of an HTTP/1.0 request that asked to be kept alive (its answer must say so)."""
_TAILS = {
    False: b"connection: close\r\n\r\n",
    True: b"\r\n",
    KEEP_ALIVE_1_0: b"connection: keep-alive\r\n\r\n",
}


def response_head(status: int, length: int, headers: bytes = JSON, close: bool = False) -> bytes:
    """A response's status line and headers; ``headers`` are whole ``name: value\\r\\n`` lines."""
    tail = b"connection: close\r\n\r\n" if close else b"\r\n"
    reason = REASONS.get(status, b"Unknown")
    return b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n%s%s" % (status, reason, length, headers, tail)


class Request:
    """One parsed request; ``answer`` holds its response bytes until the ones before it are written."""

    def __init__(
        self, method: str, path: str, headers: dict[bytes, bytes], body: bytes, keep_alive: bool
    ) -> None:
        self.method, self.path, self.headers, self.body, self.keep_alive = (
            method,
            path,
            headers,
            body,
            keep_alive,
        )
        self.answer: bytes | None = None


Handler = Callable[["ServerConnection", Request], None]
Fast = Callable[["ServerConnection", bytes], bool]
"""``fast(connection, data)``: when nothing is pending on the connection, it may take ``data`` if it is one whole
request it can answer itself (True: it appended the request to ``connection.pending`` and answers it later through
``respond``/``respond_head``); False: the parser reads it. The gateway's fast lane (``_native/fastlane.pyx``)."""


class HTTPServer:
    """Serves ``handler(connection, request)``, which answers each request once with
    ``connection.respond(request, ...)``, now or later."""

    def __init__(self, handler: Handler, *, max_body: int, keepalive_s: float = 75.0,
                 request_timeout_s: float = 30.0, fast: Fast | None = None) -> None:  # fmt: skip
        self.handler, self.max_body, self.fast = handler, max_body, fast
        self.keepalive_s, self.request_timeout_s = keepalive_s, request_timeout_s
        self.connections: set[ServerConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ServerConnection(self), sock=sock, backlog=1024)
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting, give the requests in progress up to ``grace_s`` to be answered, then close."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while any(c.pending for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.begun and now - conn.begun > self.request_timeout_s:
                    conn.refuse(408, b'{"error":"the request took too long to arrive"}')
                elif not conn.begun and not conn.pending and now - conn.last > self.keepalive_s:
                    conn.transport.close()


class ServerConnection:
    """One client connection (see the module docstring)."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: collections.deque[Request] = (
            collections.deque()
        )  # handed to the handler, not yet written
        self.closed = self.refused = self.paused = self.writable = False
        self.last, self.begun = time.monotonic(), 0.0
        self._out: list[bytes] = []
        self._flush_due = False
        self._in_head, self._fed = False, 0
        self._url, self._headers, self._body, self._size, self._head = b"", {}, [], 0, 0

    # -- transport events ------------------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport, self.writable = transport, True
        self.server.connections.add(self)
        with contextlib.suppress(OSError, AttributeError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)

    def eof_received(self) -> None:  # (asyncio.Protocol's default: the transport closes itself)
        return None

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        fast = self.server.fast
        if fast is not None and not self.pending and not self._in_head and fast(self, data):
            return
        self._fed = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.begun:  # stopped inside a request (CONNECT): nothing was handed on
                return self.refuse(400, b'{"error":"protocol upgrades are not supported"}')
            # llhttp completed the request asking for the upgrade and it was handed on: it is answered over
            # HTTP/1.1 (a server may ignore Upgrade), then the connection closes, as the parser reads no further
            self.refused = True
            if self.pending:
                self.pending[-1].keep_alive = False
            else:
                self.transport.close()
            return
        except httptools.HttpParserError as exc:
            if not self.refused:  # a callback's refusal surfaces here too
                self.refuse(400, b'{"error":"malformed HTTP request: %s"}' % str(exc).encode()[:200])
            return
        if self._in_head:  # a head still arriving: bounded here, whatever part of it (URL, a header) grows
            self._head += len(data)  # (what a head that arrived whole measures: on_headers_complete)
            if self._head > MAX_HEAD_BYTES:
                self.refuse(431, b'{"error":"the request head is too large"}')

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its requests
        self.writable = False
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable = True
        if not self.paused:
            self.transport.resume_reading()

    # -- parser callbacks ------------------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:  # a message's first callback (no on_message_begin: one call less)
        if not self._in_head:
            self._in_head, self.begun = True, time.monotonic()
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        headers = self._headers
        if self._head + self._fed > MAX_HEAD_BYTES and (
            len(self._url) + sum(len(k) + len(v) for k, v in headers.items()) > MAX_HEAD_BYTES
        ):
            self.refuse(431, b'{"error":"the request head is too large"}')
            raise ValueError("head too large")
        declared = headers.get(b"content-length")
        if declared is not None and int(declared) > self.server.max_body:
            self.refuse(413, b'{"error":"the request body is too large"}')
            raise ValueError("body too large")  # stops the parser
        if not self.pending and headers.get(b"expect", b"").lower() == b"100-continue":
            # (behind unanswered requests it would come before their answers: the client sends the body anyway
            # once its wait for 100 is over)
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.server.max_body:
            self.refuse(413, b'{"error":"the request body is too large"}')
            raise ValueError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.begun = 0.0
        url, parts, parser = self._url, self._body, self.parser
        query = url.find(b"?")
        request = Request(
            parser.get_method().decode("latin-1"),
            (url if query < 0 else url[:query]).decode("latin-1"),
            self._headers,
            parts[0] if len(parts) == 1 else b"".join(parts),
            parser.should_keep_alive(),
        )
        self._url, self._headers, self._body, self._size, self._head = b"", {}, [], 0, 0  # the next message's
        if request.keep_alive and b"connection" in request.headers and parser.get_http_version() == "1.0":
            request.keep_alive = KEEP_ALIVE_1_0  # says so in its answer, or the client closes
        self.pending.append(request)
        if len(self.pending) >= MAX_PIPELINED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        try:
            self.server.handler(self, request)
        except Exception:
            log.exception("handling %s %s failed", request.method, request.path)
            if request.answer is None:
                self.respond(request, 500, b'{"error":"internal error"}')

    # -- answering ---------------------------------------------------------------------------------------------

    def respond(self, request: Request, status: int, body: bytes, headers: bytes = JSON) -> None:
        """Answer ``request`` (``headers``: whole header lines). Answers leave in request order: when this one
        is the oldest unanswered, it goes out with any answered after it; when requests are still pending behind
        it, the write waits for the end of this turn of the event loop, to take their answers along."""
        if request.answer is None:
            reason = REASONS.get(status, b"Unknown")
            self._answer(request, b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n%s%s%s" % (
                status, reason, len(body), headers, _TAILS[request.keep_alive], body))  # fmt: skip

    def respond_head(self, request: Request, head: bytes, body: bytes) -> None:
        """Answer with a head made elsewhere (status line, content-length and other header lines, each ending in
        CRLF, without the blank line): how a gateway passes a replica's answer on."""
        if request.answer is not None:
            return
        pending = self.pending
        if (
            request.keep_alive is True
            and len(pending) == 1
            and pending[0] is request
            and not self._out
            and not self.closed
        ):
            pending.popleft()  # the common case, nothing before or behind it: straight out
            request.answer = b""
            self.transport.write(head + b"\r\n" + body)
            self.last = time.monotonic()
            if self.paused:
                self.paused = False
                if self.writable:
                    self.transport.resume_reading()
            return
        self._answer(request, head + _TAILS[request.keep_alive] + body)

    def _answer(self, request: Request, answer: bytes) -> None:
        if self.closed:
            return
        request.answer = answer
        pending, out = self.pending, self._out
        while pending and pending[0].answer is not None:
            done = pending.popleft()
            out.append(done.answer)  # type: ignore[arg-type]
            if not done.keep_alive:
                pending.clear()
                self._flush()
                self.transport.close()
                return
        if not pending:
            self._flush()
        elif out and not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        if self.paused and len(pending) <= MAX_PIPELINED // 2:
            self.paused = False
            if self.writable:
                self.transport.resume_reading()

    def _flush(self) -> None:
        self._flush_due = False
        out = self._out
        if out and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            self.last = time.monotonic()

    def refuse(self, status: int, body: bytes) -> None:
        """Answer ``status`` after the answers still owed, and close: the connection's byte stream cannot be
        trusted past this point, so nothing more is read."""
        if self.refused or self.closed:
            return
        self.refused = True
        self.transport.pause_reading()
        refusal = Request("", "", {}, b"", False)
        self.pending.append(refusal)
        self._answer(refusal, response_head(status, len(body), JSON, True) + body)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: any free port) and listening: connections made from now on wait in its
    backlog until :func:`serve` starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


async def serve(handler: Handler, sock: socket.socket, *, max_body: int,
                on_start: Callable[[], Awaitable[None]] | None = None,
                on_stop: Callable[[], Awaitable[None]] | None = None, fast: Fast | None = None) -> None:  # fmt: skip
    """Serve ``handler`` on the listening ``sock`` until SIGTERM or SIGINT, then answer what is in progress and
    return. Run it with ``uvloop.run``."""
    loop, stopped = asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    if on_start is not None:
        await on_start()
    server = HTTPServer(handler, max_body=max_body, fast=fast)
    await server.start(sock)
    await stopped.wait()
    await server.close()
    if on_stop is not None:
        await on_stop()


# -- upstream ------------------------------------------------------------------------------------------------

Done = Callable[[int, bytes, bytes], None]
"""``done(status, head, body)``: ``head`` is the status line and header lines, each ending in CRLF."""
Failed = Callable[[str], None]
Answered = Callable[["UpstreamConnection", bytes], bool]
"""``answered(connection, data)``: when nothing is buffered on the connection, it may take ``data`` if it is whole
answers it can pass on itself (True); False: :meth:`UpstreamConnection.data_received` reads it. The gateway's fast
lane (``_native/fastlane.pyx``)."""
_CLOSE = b"connection: close\r\n"
PIPELINE = 8
"""A batch goes on the connection written last while fewer than this are in flight on it (HTTP/1.1 pipelining:
the replica reads them together, so batches them, and its answers come back in fewer reads)."""
HOLD = 64
"""While the replica is answering on the connection written last, up to this many new requests wait for its answers
and leave with their arrival, in one write (or at the next :meth:`UpstreamPool.expire`, if the answers are slow)."""


class _Exchange:
    def __init__(self, data: bytes, deadline: float, done: Done, failed: Failed) -> None:
        self.data, self.deadline, self.done, self.failed = data, deadline, done, failed


class UpstreamConnection:
    """A keep-alive connection to a replica; ``inflight`` are the requests sent on it, oldest first.

    Replicas are archipel's own servers, whose answers always start ``HTTP/1.1 NNN reason`` then
    ``content-length: N`` (:func:`response_head`): answers are framed by that alone, without a general parser,
    and anything else ends the connection as a failure."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.inflight: collections.deque[Any] = collections.deque()
        self.idle_since = 0.0
        self.closed = False
        self.reason = "connection lost"
        self._buffer = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        with contextlib.suppress(OSError, AttributeError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, batch: list[Any]) -> None:
        self.inflight.extend(batch)
        self.transport.write(batch[0].data if len(batch) == 1 else b"".join(e.data for e in batch))

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            buffer = self._buffer + data
        else:
            answered = self.pool.answered
            if answered is not None and answered(self, data):
                return
            buffer = data
        while buffer:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    return self.abort("an answer's head is too large")
                break
            line = buffer.find(b"\r\n")
            if not buffer.startswith(b"HTTP/1.1 ") or buffer[line + 2 : line + 18] != b"content-length: ":
                return self.abort("the answer is not an archipel replica's")
            try:
                start = end + 4
                stop = start + int(buffer[line + 18 : buffer.find(b"\r\n", line + 18)])
                status = int(buffer[9:12])
            except ValueError:
                return self.abort("the answer's status or length is not a number")
            if len(buffer) < stop:
                break
            if not self.inflight:
                return self.abort("an answer nobody asked for")
            head, body, buffer = buffer[: end + 2], buffer[start:stop], buffer[stop:]
            exchange = self.inflight.popleft()
            if _CLOSE in head:  # the replica closes after this answer; the requests behind it fail over
                self.abort("the replica closed the connection")
                return exchange.done(status, head.replace(_CLOSE, b""), body)
            if not self.inflight:
                self.pool.release(self)
            exchange.done(status, head, body)
        self._buffer = buffer
        pool = self.pool
        if pool._queue and not pool._flush_due:  # requests held while these answers were computed
            pool._flush()

    def eof_received(self) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        inflight, self.inflight = self.inflight, collections.deque()
        for exchange in inflight:
            exchange.failed(self.reason)

    def abort(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = reason
            self.transport.abort()


class UpstreamPool:
    """Connections to one ``host:port`` (see the module docstring). A connection idle longer than
    ``max_idle_s`` is not reused (the server may be closing it)."""

    def __init__(self, host: str, port: int, *, max_connections: int = 16, max_idle_s: float = 30.0,
                 answered: Answered | None = None) -> None:  # fmt: skip
        self.host, self.port, self.max_connections, self.max_idle_s = host, port, max_connections, max_idle_s
        self.answered = answered
        self.loop = asyncio.get_running_loop()
        self.conns: list[UpstreamConnection] = []  # connected
        self.idle: list[UpstreamConnection] = []  # connected, nothing in flight
        self.connecting = 0
        self.closed = False
        self._queue: list[Any] = []
        self.last: UpstreamConnection | None = None  # written last
        self._flush_due = False

    def request(self, data: bytes, timeout_s: float, done: Done, failed: Failed) -> None:
        """Send ``data`` (a whole request) at the end of this turn of the loop; exactly one of ``done(status,
        headers, body)`` or ``failed(reason)`` is called later."""
        self.submit(_Exchange(data, time.monotonic() + timeout_s, done, failed))

    def submit(self, exchange: Any) -> None:
        """:meth:`request` for an object of one's own with the same four members (``data``, ``deadline`` from
        ``time.monotonic()``, ``done``, ``failed``), saving an object a request on a hot path."""
        if self.closed:
            self.loop.call_soon(exchange.failed, "the replica is gone")
            return
        queue, conn = self._queue, self.last
        idle = not queue and conn is not None and not conn.inflight and not conn.closed and conn in self.idle
        if idle and time.monotonic() - conn.idle_since < self.max_idle_s:  # the replica is idle: straight out
            self.idle.remove(conn)
            conn.inflight.append(exchange)
            conn.transport.write(exchange.data)
            return
        queue.append(exchange)
        if self._flush_due:
            return
        if conn is not None and conn.inflight and not conn.closed and len(queue) < HOLD:
            return  # the replica is answering on it: these leave with its next answers (see UpstreamConnection)
        self._flush_due = True
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        batch, self._queue = self._queue, []
        if not batch:
            return
        conn = self.last
        if conn is not None and not conn.closed and 0 < len(conn.inflight) < PIPELINE:
            return conn.send(batch)
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < self.max_idle_s:
                self.last = conn
                return conn.send(batch)
            conn.abort("idle too long")
            self.discard(conn)  # now: the choice below must not fall on it
        if len(self.conns) + self.connecting < self.max_connections or not self.conns:
            self.loop.create_task(self._connect(batch))
        else:
            min(self.conns, key=lambda c: len(c.inflight)).send(batch)

    async def _connect(self, batch: list[Any]) -> None:
        self.connecting += 1
        try:
            connect = self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port)
            _, conn = await asyncio.wait_for(connect, max(batch[0].deadline - time.monotonic(), 0.001))
        except (OSError, TimeoutError) as exc:
            for exchange in batch:
                exchange.failed(f"cannot connect ({type(exc).__name__})")
            return
        finally:
            self.connecting -= 1
        if self.closed:
            conn.transport.close()
            for exchange in batch:
                exchange.failed("the replica is gone")
            return
        self.conns.append(conn)
        self.last = conn
        conn.send(batch)

    def release(self, conn: UpstreamConnection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        for where in (self.conns, self.idle):
            with contextlib.suppress(ValueError):
                where.remove(conn)
        if conn is self.last:
            self.last = None
            if self._queue and not self._flush_due:  # they were held behind its answers
                self._flush_due = True
                self.loop.call_soon(self._flush)

    def expire(self, now: float) -> None:
        """Abort every connection whose oldest request is past its deadline (failing all requests on it)."""
        for conn in list(self.conns):
            if conn.inflight and conn.inflight[0].deadline < now:
                conn.abort("timed out")
        if self._queue and not self._flush_due:  # held behind answers that are slow to come
            self._flush()

    def close(self) -> None:
        self.closed = True
        for conn in list(self.conns):
            conn.transport.close()


COMPILED = False
"""Whether this module's compiled twin (:mod:`archipel.serving._native`) is what runs."""

if __name__ == "archipel.serving.http1":  # (the twin itself is archipel.serving._native.http1)
    from archipel.serving._native import load as _load

    _twin = _load("http1")
    if _twin is not None:
        globals().update({k: v for k, v in vars(_twin).items() if not k.startswith("__")})
        COMPILED = True
