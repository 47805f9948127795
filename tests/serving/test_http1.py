"""archipel's HTTP/1.1 layer on real loopback sockets: the server (keep-alive, pipelining in order, chunked
bodies, 100-continue, the 400/408/413/431 refusals, timeouts, graceful close) as a raw client sees it, and the
upstream pool (pipelined batches, framing, failures, deadlines) against a real server and misbehaving ones.

Server tests run the server on a uvloop loop in a background thread and talk to it with blocking sockets, to
control the bytes exactly; upstream tests run pool and servers together in one ``uvloop.run``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvloop

from archipel.serving.http1 import (
    MAX_HEAD_BYTES,
    HTTPServer,
    Request,
    ServerConnection,
    UpstreamPool,
    listen,
    response_head,
)

MAX_BODY = 1000


def echo(conn: ServerConnection, request: Request) -> None:
    """Answers at once with what it received; ``/boom`` raises, ``/later/<s>`` answers ``s`` seconds later."""
    if request.path == "/boom":
        raise RuntimeError("the handler failed")
    body = json.dumps(
        {"method": request.method, "path": request.path, "body": request.body.decode()}
    ).encode()
    if request.path.startswith("/later/"):
        delay = float(request.path.rsplit("/", 1)[1])
        asyncio.get_running_loop().call_later(delay, conn.respond, request, 200, body)
    else:
        conn.respond(request, 200, body)


class Served:
    """An :class:`HTTPServer` on its own uvloop loop in a background thread."""

    def __init__(self, handler: Callable[[ServerConnection, Request], None], **options: Any) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        sock = listen("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server = HTTPServer(handler, **{"max_body": MAX_BODY, **options})
        self.run(self.server.start(sock))

    def run(self, coroutine: Awaitable[Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        async def close() -> None:
            await self.server.close(grace_s=1.0)
            await asyncio.sleep(0.01)  # the sweeper's cancellation and the connections' losses run

        self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@contextmanager
def serving(handler: Callable[[ServerConnection, Request], None] = echo, **options: Any) -> Iterator[Served]:
    served = Served(handler, **options)
    try:
        yield served
    finally:
        served.stop()


def connect(port: int, timeout: float = 3.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Answer:
    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status, self.head, self.body = status, head, body

    @property
    def closes(self) -> bool:
        return b"\r\nconnection: close\r\n" in self.head.lower()

    def json(self) -> Any:
        return json.loads(self.body)


class Reader:
    """Reads answers off a blocking socket, framed by their content-length; keeps what each ``recv`` returned."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer, self.chunks = sock, b"", []

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if chunk:
            self.chunks.append(chunk)
            self.buffer += chunk
        return bool(chunk)

    def interim(self) -> bytes:
        """The next head alone (a ``100 Continue`` has no body)."""
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), "closed before a head"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"closed before an answer (got {self.buffer!r})"
        end = self.buffer.index(b"\r\n\r\n") + 4
        head = self.buffer[:end]
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        stop = end + int(fields["content-length"])
        while len(self.buffer) < stop:
            assert self._fill(), "closed inside a body"
        body, self.buffer = self.buffer[end:stop], self.buffer[stop:]
        return Answer(int(lines[0].split()[1]), head, body)

    def closed(self) -> bool:
        """Whether the server closes (EOF or reset) with nothing more to say."""
        try:
            return not self._fill() and not self.buffer
        except ConnectionResetError:
            return not self.buffer


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nhost: t\r\n%s\r\n" % (path.encode(), extra)


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n%s\r\n%s" % (
        path.encode(),
        len(body),
        extra,
        body,
    )


def exchange(port: int, data: bytes) -> Answer:
    with connect(port) as sock:
        sock.sendall(data)
        return Reader(sock).answer()


# -- server ------------------------------------------------------------------------------------------------------


def test_keep_alive_answers_several_requests_on_one_connection() -> None:
    with serving() as served, connect(served.port) as sock:
        reader = Reader(sock)
        for i in range(5):
            sock.sendall(post(f"/r{i}", b"body %d" % i))
            answer = reader.answer()
            assert answer.status == 200 and not answer.closes
            assert answer.json() == {"method": "POST", "path": f"/r{i}", "body": f"body {i}"}
        sock.sendall(get("/q?x=1"))
        assert reader.answer().json()["path"] == "/q"  # the query is not part of the path
        assert len(served.server.connections) == 1


def test_pipelined_answers_leave_in_request_order_and_together() -> None:
    def handler(conn: ServerConnection, request: Request) -> None:
        delay = {"/1": 0.3, "/2": 0.0, "/3": 0.1}[request.path]
        body, loop = request.path.encode(), asyncio.get_running_loop()
        if delay:
            loop.call_later(delay, conn.respond, request, 200, body)
        else:
            conn.respond(request, 200, body)

    with serving(handler) as served, connect(served.port) as sock:
        reader = Reader(sock)
        sent = time.monotonic()
        sock.sendall(get("/1") + get("/2") + get("/3"))
        assert [reader.answer().body for _ in range(3)] == [b"/1", b"/2", b"/3"]
        # /2 and /3 were ready first but waited for /1; the three then left in one write, which a single
        # recv on loopback returns whole
        assert time.monotonic() - sent >= 0.25
        assert len(reader.chunks) == 1


def test_chunked_request_body_is_reassembled() -> None:
    head = b"POST /c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
    with serving() as served, connect(served.port) as sock:
        sock.sendall(head + b"5\r\nhello\r\n")
        time.sleep(0.05)
        sock.sendall(b"1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n")
        answer = Reader(sock).answer()
        assert answer.status == 200 and answer.json()["body"] == "hello world!"


def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    with serving() as served, connect(served.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"POST /e HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
        assert reader.interim() == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"12345")
        assert reader.answer().json()["body"] == "12345"


def test_a_declared_body_over_the_limit_gets_413_before_it_is_sent() -> None:
    with serving() as served, connect(served.port) as sock:
        sock.sendall(
            b"POST /big HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n"
            % (MAX_BODY + 1)
        )
        reader = Reader(sock)
        answer = reader.answer()  # not a 100 Continue: the body is refused before it is sent
        assert answer.status == 413 and answer.closes
        assert reader.closed()
        assert exchange(served.port, post("/ok", b"x" * MAX_BODY)).json()["body"] == "x" * MAX_BODY


def test_a_chunked_body_passing_the_limit_gets_413() -> None:
    with serving() as served, connect(served.port) as sock:
        chunk = b"%x\r\n%s\r\n" % (MAX_BODY // 2 + 1, b"y" * (MAX_BODY // 2 + 1))
        sock.sendall(b"POST /big HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n" + chunk)
        time.sleep(0.05)  # one chunk is under the limit: nothing is answered yet
        sock.sendall(chunk)
        reader = Reader(sock)
        answer = reader.answer()
        assert answer.status == 413 and answer.closes
        assert reader.closed()


@pytest.mark.parametrize(
    "data",
    [
        b"NOT AN HTTP REQUEST\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: t\r\nbad\x01name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: t\r\nx-value: a\x00b\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: nope\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["request-line", "header-name", "header-value", "content-length", "smuggling", "chunk-size"],
)
def test_a_malformed_request_gets_400_and_the_server_goes_on(data: bytes) -> None:
    with serving() as served:
        with connect(served.port) as sock:
            sock.sendall(data)
            reader = Reader(sock)
            answer = reader.answer()
            assert answer.status == 400 and answer.closes and "error" in answer.json()
            assert reader.closed()
        assert exchange(served.port, get("/after")).status == 200


def test_a_head_over_64_kib_gets_431() -> None:
    line = b"x-filler-%04d: " + b"f" * 1000 + b"\r\n"
    headers = b"".join(line % i for i in range(MAX_HEAD_BYTES // 1000 + 2))
    with serving() as served:
        with connect(served.port) as sock:
            sock.sendall(get("/h", headers))
            reader = Reader(sock)
            answer = reader.answer()
            assert answer.status == 431 and answer.closes
            assert reader.closed()
        just_under = b"".join(line % i for i in range(MAX_HEAD_BYTES // 1100))
        assert exchange(served.port, get("/h", just_under)).status == 200


@pytest.mark.parametrize(
    "data",
    [
        b"GET /" + b"u" * (MAX_HEAD_BYTES + 1024) + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: t\r\nx-never-ends: " + b"v" * (MAX_HEAD_BYTES + 1024),
    ],
    ids=["long-url", "unterminated-header"],
)
def test_any_head_over_64_kib_gets_431(data: bytes) -> None:
    with serving() as served, connect(served.port, timeout=1.0) as sock:
        sock.sendall(data)
        assert Reader(sock).answer().status == 431


@pytest.mark.parametrize(
    "data",
    [b"GET /old HTTP/1.0\r\n\r\n", get("/close", b"connection: close\r\n")],
    ids=["http-1.0", "connection-close"],
)
def test_a_request_without_keep_alive_is_answered_with_close_and_closed(data: bytes) -> None:
    with serving() as served, connect(served.port) as sock:
        sock.sendall(data)
        reader = Reader(sock)
        answer = reader.answer()
        assert answer.status == 200 and answer.closes
        assert reader.closed()


def test_http_1_0_with_keep_alive_stays_open() -> None:
    with serving() as served, connect(served.port) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(b"GET /old HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            answer = reader.answer()
            assert answer.status == 200 and not answer.closes


def test_a_handler_raising_gets_500_and_the_connection_stays_usable() -> None:
    with serving() as served, connect(served.port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/boom") + get("/fine"))
        failed = reader.answer()
        assert failed.status == 500 and not failed.closes and failed.json() == {"error": "internal error"}
        assert reader.answer().json()["path"] == "/fine"
        sock.sendall(get("/again"))
        assert reader.answer().json()["path"] == "/again"


def test_a_stalled_request_gets_408_and_an_idle_connection_is_closed() -> None:
    # two servers, so that each timeout is measured alone (a keep-alive limit shorter than the request timeout
    # would otherwise be the one to end a slow request: test_a_request_arriving_slowly_is_not_closed_as_idle)
    with serving(request_timeout_s=1.5) as slow, serving(keepalive_s=1.0) as idle:
        with connect(slow.port, timeout=4.0) as stalled, connect(idle.port, timeout=4.0) as unused:
            started = time.monotonic()
            stalled.sendall(b"POST /s HTTP/1.1\r\nhost: t\r\ncontent-le")
            unused.sendall(get("/i"))
            unused_reader = Reader(unused)
            assert unused_reader.answer().status == 200
            stalled_reader = Reader(stalled)
            answer = stalled_reader.answer()
            assert answer.status == 408 and answer.closes and "error" in answer.json()
            assert stalled_reader.closed()
            assert unused_reader.closed()  # by now (1.5 s in) the idle one is past its 1 s
            assert time.monotonic() - started < 3.5
        time.sleep(0.05)
        assert not slow.server.connections and not idle.server.connections


def test_a_keep_alive_connection_in_use_is_not_closed_as_idle() -> None:
    with serving(keepalive_s=1.0) as served, connect(served.port) as sock:
        reader = Reader(sock)
        for i in range(3):  # 3 requests 0.6 s apart: each keeps the connection alive for another second
            sock.sendall(get(f"/k{i}"))
            assert reader.answer().status == 200
            time.sleep(0.6)
        sock.sendall(get("/last"))
        assert reader.answer().status == 200


def test_a_request_arriving_slowly_is_not_closed_as_idle() -> None:
    with serving(keepalive_s=1.0, request_timeout_s=10.0) as served, connect(served.port) as sock:
        sock.sendall(b"POST /slow HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the answer says what happened
            for byte in b"0123456789":  # the body takes 2.5 s, well within request_timeout_s
                time.sleep(0.25)
                sock.sendall(bytes([byte]))
        assert Reader(sock).answer().json()["body"] == "0123456789"


def test_an_upgrade_request_gets_exactly_one_answer() -> None:
    with serving() as served, connect(served.port) as sock:
        sock.sendall(
            get(
                "/u",
                b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n",
            )
        )
        reader = Reader(sock)
        answers = [reader.answer()]
        while not reader.closed():
            answers.append(reader.answer())
        assert len(answers) == 1, [a.head for a in answers]


def test_close_writes_a_pending_answer_before_closing() -> None:
    served = Served(echo)
    try:
        with connect(served.port) as sock:
            sock.sendall(get("/later/0.3"))
            time.sleep(0.05)  # the request is in the handler's hands
            started = time.monotonic()
            served.run(served.server.close(grace_s=3.0))
            assert 0.2 < time.monotonic() - started < 2.0  # close waited for the answer, not the whole grace
            reader = Reader(sock)
            assert reader.answer().json()["path"] == "/later/0.3"
            assert reader.closed()
        with pytest.raises(ConnectionRefusedError):
            connect(served.port)  # no longer accepting
    finally:
        served.stop()


def test_a_refusal_behind_a_pending_request_comes_after_its_answer() -> None:
    with serving() as served, connect(served.port) as sock:
        sock.sendall(get("/later/0.2") + post("/big", b"")[:-4] + b"9" * 6 + b"\r\n\r\n")
        reader = Reader(sock)
        assert reader.answer().status == 200  # the pending GET's own answer first
        assert reader.answer().status == 413


def test_100_continue_behind_a_pending_request_comes_after_its_answer() -> None:
    with serving() as served, connect(served.port) as sock:
        sock.sendall(get("/later/0.2") + b"POST /e HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\n"
                     b"content-length: 2\r\n\r\n")  # fmt: skip
        reader = Reader(sock)
        assert reader.interim().startswith(b"HTTP/1.1 200 OK")


def test_response_head_shape() -> None:
    assert response_head(200, 2) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n"
    )
    assert response_head(503, 0, b"", close=True) == (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    assert response_head(299, 5, b"x-a: 1\r\n").startswith(
        b"HTTP/1.1 299 Unknown\r\ncontent-length: 5\r\nx-a"
    )


# -- upstream ----------------------------------------------------------------------------------------------------


class Outcome:
    """The ``done``/``failed`` pair of one upstream request, as a future of ``(status, head, body)`` or a
    reason."""

    def __init__(self) -> None:
        self.future: asyncio.Future[tuple[int, bytes, bytes] | str] = (
            asyncio.get_running_loop().create_future()
        )
        self.calls = 0

    def done(self, status: int, head: bytes, body: bytes) -> None:
        self.calls += 1
        self.future.set_result((status, head, body))

    def failed(self, reason: str) -> None:
        self.calls += 1
        self.future.set_result(reason)


def issue(pool: UpstreamPool, data: bytes, timeout_s: float = 5.0) -> Outcome:
    outcome = Outcome()
    pool.request(data, timeout_s, outcome.done, outcome.failed)
    return outcome


async def settle(outcomes: list[Outcome], timeout: float = 5.0) -> list[tuple[int, bytes, bytes] | str]:
    results = await asyncio.wait_for(asyncio.gather(*(o.future for o in outcomes)), timeout)
    await asyncio.sleep(0.02)
    assert all(o.calls == 1 for o in outcomes)  # exactly one of done or failed, once
    return results


async def start_archipel(handler: Callable[[ServerConnection, Request], None]) -> tuple[HTTPServer, int]:
    sock = listen("127.0.0.1", 0)
    server = HTTPServer(handler, max_body=MAX_BODY)
    await server.start(sock)
    return server, sock.getsockname()[1]


async def start_raw(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_requests(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    return [await reader.readuntil(b"\r\n\r\n") for _ in range(count)]  # bodiless requests


def test_upstream_requests_in_one_turn_are_pipelined_on_one_connection() -> None:
    async def main() -> None:
        seen: list[ServerConnection] = []

        def handler(conn: ServerConnection, request: Request) -> None:
            seen.append(conn)
            status = int(request.path.split("/")[2])
            delay = 0.1 if status == 404 else 0.0  # one slow answer holds the ones behind it
            loop = asyncio.get_running_loop()
            loop.call_later(delay, conn.respond, request, status, request.path.encode() + request.body)

        server, port = await start_archipel(handler)
        pool = UpstreamPool("127.0.0.1", port)
        statuses = [200, 404, 503, 200, 413, 500, 200, 401]
        outcomes = [issue(pool, post(f"/s/{s}/{i}", b"#%d" % i)) for i, s in enumerate(statuses)]
        results = await settle(outcomes)
        for i, (s, result) in enumerate(zip(statuses, results, strict=True)):
            assert not isinstance(result, str), result
            status, head, body = result
            assert status == s and body == f"/s/{s}/{i}#{i}".encode()
            assert head.startswith(b"HTTP/1.1 %d " % s) and head.endswith(b"\r\n")
            assert b"content-length: %d\r\n" % len(body) in head
        assert len(set(seen)) == 1 and len(pool.conns) == 1 and pool.idle == pool.conns
        # the idle connection is reused by the next batch
        again = await settle([issue(pool, get("/s/200/again"))])
        assert again[0][2] == b"/s/200/again" and len(set(seen)) == 1  # type: ignore[index]
        pool.close()
        await server.close(grace_s=1.0)

    uvloop.run(main())


def test_upstream_connection_close_answer_is_done_and_the_connection_dropped() -> None:
    async def main() -> None:
        server, port = await start_archipel(echo)
        pool = UpstreamPool("127.0.0.1", port)
        results = await settle([issue(pool, get("/bye", b"connection: close\r\n"))])
        status, head, _ = results[0]  # type: ignore[misc]
        assert status == 200 and b"connection: close" not in head
        assert not pool.conns and not pool.idle
        assert (await settle([issue(pool, get("/next"))]))[0][0] == 200  # type: ignore[index]
        pool.close()
        await server.close(grace_s=1.0)

    uvloop.run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: many\r\n\r\nok",
    ],
    ids=["content-length-not-first", "chunked", "http-1.0", "length-not-a-number"],
)
def test_upstream_answer_not_archipel_shaped_fails_it_and_those_behind(answer: bytes) -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_requests(reader, 3)
            writer.write(response_head(200, 5) + b"first" + answer + response_head(200, 4) + b"last")
            await writer.drain()
            await reader.read()

        server, port = await start_raw(serve)
        pool = UpstreamPool("127.0.0.1", port)
        results = await settle([issue(pool, get(f"/{i}")) for i in range(3)])
        assert results[0][0] == 200 and results[0][2] == b"first"  # type: ignore[index]
        for reason in results[1:]:
            assert isinstance(reason, str) and "not" in reason, reason
        assert not pool.conns
        pool.close()
        server.close()

    uvloop.run(main())


def test_upstream_connection_closed_mid_flight_fails_the_requests_in_flight() -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_requests(reader, 3)
            writer.write(response_head(200, 2) + b"ok")  # one answer, then gone
            await writer.drain()

        server, port = await start_raw(serve)
        pool = UpstreamPool("127.0.0.1", port)
        results = await settle([issue(pool, get(f"/{i}")) for i in range(3)])
        assert results[0] == (200, response_head(200, 2)[:-2], b"ok")
        assert results[1:] == ["connection lost", "connection lost"]
        assert not pool.conns and not pool.idle
        pool.close()
        server.close()

    uvloop.run(main())


def test_upstream_expire_fails_a_request_past_its_deadline() -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers

        server, port = await start_raw(serve)
        pool = UpstreamPool("127.0.0.1", port)
        slow, patient = issue(pool, get("/slow"), timeout_s=0.2), issue(pool, get("/patient"), timeout_s=60)
        await asyncio.sleep(0.1)
        pool.expire(time.monotonic())  # not yet past the deadline
        assert not slow.future.done() and len(pool.conns) == 1
        await asyncio.sleep(0.15)
        pool.expire(time.monotonic())
        results = await settle([slow, patient])
        assert results == ["timed out", "timed out"]  # everything on the aborted connection fails
        assert not pool.conns
        pool.close()
        server.close()

    uvloop.run(main())


def test_upstream_connect_refused_fails_with_cannot_connect() -> None:
    async def main() -> None:
        with socket.socket() as unused:  # bound, not listening: connections to it are refused
            unused.bind(("127.0.0.1", 0))
            pool = UpstreamPool("127.0.0.1", unused.getsockname()[1])
            results = await settle([issue(pool, get("/a")), issue(pool, get("/b"))])
        assert all(isinstance(r, str) and r.startswith("cannot connect") for r in results), results
        assert not pool.conns and pool.connecting == 0

    uvloop.run(main())


def test_upstream_closed_pool_fails_new_requests() -> None:
    async def main() -> None:
        pool = UpstreamPool("127.0.0.1", 9)
        pool.close()
        assert await settle([issue(pool, get("/a"))]) == ["the replica is gone"]

    uvloop.run(main())


def test_upstream_pool_at_max_connections_replaces_a_stale_idle_connection() -> None:
    async def main() -> None:
        server, port = await start_archipel(echo)
        pool = UpstreamPool("127.0.0.1", port, max_connections=1, max_idle_s=0.05)
        assert (await settle([issue(pool, get("/first"))]))[0][0] == 200  # type: ignore[index]
        await asyncio.sleep(0.1)  # the connection is now too old to reuse
        try:
            results = await settle([issue(pool, get("/second"))], timeout=2.0)
        finally:
            pool.close()
            await server.close(grace_s=1.0)
        assert results[0][0] == 200, results  # type: ignore[index]

    uvloop.run(main())


def test_upstream_requests_wait_for_the_answers_in_flight_then_leave_together() -> None:
    """While a replica is answering, the pool holds new requests and sends them in one write with the answers'
    arrival: a replica busy computing gets them as one batch instead of one system call each."""

    async def main() -> None:
        first_seen, release = asyncio.Event(), asyncio.Event()
        reads: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_requests(reader, 1)
            first_seen.set()
            await release.wait()
            await asyncio.sleep(0.05)  # the held requests would have arrived by now if they had been sent
            assert reader._buffer == b""  # type: ignore[attr-defined]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")
            reads.append(await reader.read(65536))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb" * 2)
            await writer.drain()
            await reader.read()

        server, port = await start_raw(serve)
        pool = UpstreamPool("127.0.0.1", port)
        first = issue(pool, get("/one"))
        await first_seen.wait()
        held = [issue(pool, get("/two")), issue(pool, get("/three"))]
        release.set()
        results = await settle([first, *held])
        assert [r[2] for r in results] == [b"a", b"b", b"b"], results  # type: ignore[index]
        assert len(reads) == 1 and reads[0].count(b"GET ") == 2  # both in one write
        pool.close()
        server.close()

    uvloop.run(main())


def test_upstream_requests_held_behind_a_lost_connection_go_out_on_another() -> None:
    async def main() -> None:
        accepted = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            if accepted == 1:  # takes the first request and dies without answering
                await read_requests(reader, 1)
                await asyncio.sleep(0.05)
                return
            while True:
                await read_requests(reader, 1)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

        server, port = await start_raw(serve)
        pool = UpstreamPool("127.0.0.1", port)
        first = issue(pool, get("/one"))
        await asyncio.sleep(0.01)
        held = [issue(pool, get("/two")), issue(pool, get("/three"))]
        results = await settle([first, *held])
        assert isinstance(results[0], str) and [r[2] for r in results[1:]] == [b"ok", b"ok"]  # type: ignore[index]
        pool.close()
        server.close()

    uvloop.run(main())
