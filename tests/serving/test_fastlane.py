"""The gateway's fast lane (``_native/fastlane.pyx``) against the Python path it shortcuts: whatever request the lane
takes, it must send the replica exactly what the Python path (llhttp, ``Gateway.handle``) sends and answer the client
the same; whatever it declines, the Python path answers as before. In process, with recording transports: the
gateway's processes over real sockets are ``test_gateway.py``'s."""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import datetime
from typing import Any

import pytest

from archipel.services.tokens import Token
from archipel.serving import gateway as G
from archipel.serving import http1
from archipel.serving._native import status

TOKEN = b"Bearer tok-abcdefghijklmnopqrstuvwxyz0123456789"
BODY = b'{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1.5,2.5]}]}'
ANSWER = b'{"model_name":"cancer","outputs":[]}'


def _request(*headers: str, body: bytes = BODY, line: str = "POST /v2/models/cancer/infer HTTP/1.1") -> bytes:
    head = [line, "Host: gw", f"Authorization: {TOKEN.decode()}", *headers]
    if body and not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, *args: Any) -> None:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class _Bench:
    """A gateway with one deployment (``cancer``, one replica) and a verified ``infer`` token, a client connection
    and the replica's connection on recording transports; ``fast``: through the lane or the Python path only."""

    def __init__(self, fast: bool) -> None:
        self.gw = G.Gateway(None, None, G.GatewayConfig(replica_secret="s3cret"))  # type: ignore[arg-type]
        deployment = G._Deployment("cancer", "cancer", 1, True, [])
        self.replica = G._Replica(1, "cancer", "local", "EU", "http://127.0.0.1:9")
        deployment.replicas.append(self.replica)
        self.gw.deployments, self.gw.replicas, self.gw.loaded = (
            {"cancer": deployment},
            {1: self.replica},
            True,
        )
        token = Token("t1", "", "infer", "cancer", ("EU",), datetime.now(), None, None)
        self.gw.tokens[TOKEN] = (time.monotonic(), token)
        self.gw.tokens[b"Bearer nope"] = (time.monotonic(), None)  # looked up: no such token
        for origin in (None, "EU"):
            self.gw._allowed_cache[("cancer", origin, ("EU",))] = deployment.replicas
        server = http1.HTTPServer(self.gw.handle, max_body=1 << 20, fast=self.gw.fast if fast else None)
        self.client, self.ct = http1.ServerConnection(server), _Transport()
        self.client.connection_made(self.ct)
        self.replica.answered = self.gw._answered if fast else None  # as Gateway.refresh sets it
        pool = self.replica.pool()
        self.up, self.ut = http1.UpstreamConnection(pool), _Transport()
        self.up.connection_made(self.ut)
        pool.conns.append(self.up)
        pool.idle.append(self.up)
        self.up.idle_since = time.monotonic()

    async def exchange(self, data: bytes, *chunks: bytes, answers: list[bytes] | None = None,
                       wait: float = 0.0) -> tuple[bytes, bytes]:  # fmt: skip
        """(what the replica got, what the client got) for ``data`` (then ``chunks``), the replica's answers read as
        ``answers`` (default: one plain 200 a request, each in its own read)."""
        for part in (data, *chunks):
            self.client.data_received(part)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        sent = b"".join(self.ut.out)
        if answers is None:
            answers = [http1.response_head(200, len(ANSWER)) + ANSWER] * sent.count(
                b"x-archipel-replica-secret"
            )
        for answer in answers:
            self.up.data_received(answer)
        await asyncio.sleep(wait)
        return sent, b"".join(self.ct.out)

    def counters(self) -> tuple[int, int, int, dict[Any, int]]:
        r = self.replica
        return r.in_flight, r.failures, r.served, dict(self.gw.answers)


def _both(data: bytes, *chunks: bytes) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes], int]:
    """(fast lane's exchange, Python path's, requests the lane took)."""

    async def run() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes], int]:
        fast, slow = _Bench(True), _Bench(False)
        got = await fast.exchange(data, *chunks)
        return got, await slow.exchange(data, *chunks), fast.gw.fast.taken

    return asyncio.run(run())


needs_native = pytest.mark.skipif(
    not status()["gateway"] and os.environ.get("CI") != "true",
    reason="the compiled request path is not built here (make dev builds it; under CI it must be)",
)


@needs_native
def test_the_compiled_request_path_and_its_lane_are_what_runs() -> None:
    assert status() == {"http1": True, "gateway": True}
    gateway = G.Gateway(None, None, G.GatewayConfig())  # type: ignore[arg-type]
    assert type(gateway.fast).__name__ == "FastLane"


TAKEN = {
    "plain": _request(),
    "request id, trace, type": _request(
        "X-Request-Id: r-1",
        "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "Content-Type: application/json",
    ),
    "names in any case, spaces around values": _request(
        "x-REQUEST-id:   spaced \t", "CONTENT-TYPE:application/json"
    ),
    "origin asserted": _request("X-Archipel-Origin: EU"),
    "keep-alive said": _request("Connection: Keep-Alive"),
    "headers it does not know": _request("User-Agent: curl/8", "Accept: */*", "X-Custom: a:b:c"),
    "metadata": _request(line="GET /v2/models/cancer HTTP/1.1", body=b""),
    "ready": _request(line="GET /v2/models/cancer/ready HTTP/1.1", body=b""),
    "empty body": _request("Content-Length: 0", body=b""),
}
DECLINED = {
    "chunked": _request("Transfer-Encoding: chunked", body=b"4\r\nabcd\r\n0\r\n\r\n"),
    "two content lengths": _request("Content-Length: 5", "Content-Length: 5", body=b"abcde"),
    "length and body differ": _request("Content-Length: 9999"),
    "HTTP/1.0": _request(line="POST /v2/models/cancer/infer HTTP/1.0"),
    "query": _request(line="POST /v2/models/cancer/infer?x=1 HTTP/1.1"),
    "expect": _request("Expect: 100-continue"),
    "upgrade": _request("Upgrade: h2c", "Connection: Upgrade"),
    "connection close": _request("Connection: close"),
    "obs-text in a value": _request("X-Note: caf\u00e9".encode("latin-1").decode("latin-1")),
    "folded header": _request("X-Note: a", " folded"),
    "space before colon": _request("X-Note : a"),
    "other route": _request(line="GET /metrics HTTP/1.1", body=b""),
    "method it does not take": _request(line="PUT /v2/models/cancer/infer HTTP/1.1"),
    "origin the token may not assert": _request("X-Archipel-Origin: US"),
    "refused token": _request(line="POST /v2/models/cancer/infer HTTP/1.1").replace(TOKEN, b"Bearer nope"),
    "two tokens": _request("Authorization: Bearer nope"),
    "no deployment": _request(line="POST /v2/models/nothing/infer HTTP/1.1"),
}


@needs_native
@pytest.mark.parametrize("name", list(TAKEN))
def test_what_the_lane_takes_goes_out_as_the_python_path_sends_it(name: str) -> None:
    data = TAKEN[name]
    fast, slow, taken = _both(data)
    assert taken == 1, name
    assert fast == slow and fast[1].startswith(b"HTTP/1.1 200 OK\r\n") and fast[1].endswith(ANSWER)
    assert fast[0].startswith(b"POST " if data.startswith(b"POST") else b"GET ")


@needs_native
@pytest.mark.parametrize("name", list(DECLINED))
def test_what_the_lane_declines_the_python_path_answers_as_before(name: str) -> None:
    fast, slow, taken = _both(DECLINED[name])
    assert taken == 0, name
    if name == "other route":  # /metrics: the lane counts what it declined (this request)
        assert b'archipel_gateway_fast_lane_requests_total{lane="python"} 1\n' in fast[1]
        fast, slow = (fast[0], fast[1].split(b"\r\n")[0]), (slow[0], slow[1].split(b"\r\n")[0])
    assert fast == slow, name


OK = http1.response_head(200, len(ANSWER)) + ANSWER
ANSWERS = {  # name: (requests, the replica's reads, whether the lane passes them on)
    "a 404": (_request(), [http1.response_head(404, 11) + b'{"error":1}'], True),
    "two answers in one read": (_request() + _request(), [OK + OK], True),
    "an answer in two reads": (_request(), [OK[:20], OK[20:]], False),
    "an answer and a half": (_request() + _request(), [OK + OK[:20], OK[20:]], False),
    "the replica closes": (_request(), [http1.response_head(200, len(ANSWER), close=True) + ANSWER], False),
    "a 503 (retried, then given up)": (_request(), [http1.response_head(503, 2) + b"{}"], False),
    "a 401 (the replica refused the gateway)": (_request(), [http1.response_head(401, 2) + b"{}"], False),
    "not a replica's answer": (
        _request(),
        [b"HTTP/1.1 200 OK\r\nserver: x\r\ncontent-length: 2\r\n\r\n{}"],
        False,
    ),
}


@needs_native
@pytest.mark.parametrize("name", list(ANSWERS))
def test_replicas_answers_reach_the_client_as_the_python_path_passes_them_on(name: str) -> None:
    data, reads, plain = ANSWERS[name]

    async def run() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes], tuple[Any, ...], tuple[Any, ...]]:
        fast, slow = _Bench(True), _Bench(False)
        got = await fast.exchange(data, answers=reads, wait=0.1)
        return got, await slow.exchange(data, answers=reads, wait=0.1), fast.counters(), slow.counters()

    (fast, slow, fast_counted, slow_counted) = asyncio.run(run())
    assert fast == slow and fast_counted == slow_counted
    # (an answer that is not a replica's aborts the connection: its request fails when the transport reports the loss)
    assert fast[1].startswith(b"HTTP/1.1 ") or name == "not a replica's answer"
    if plain:
        assert fast_counted[2] == data.count(b"POST ") and fast_counted[:2] == (0, 0)


@needs_native
def test_split_and_pipelined_requests_take_the_python_path_in_order() -> None:
    data = _request("X-Request-Id: one")
    fast, slow, taken = _both(data[:30], data[30:])
    assert taken == 0 and fast == slow and fast[1].count(b"200 OK") == 1
    two = data + _request("X-Request-Id: two")
    fast, slow, taken = _both(two)
    assert taken == 0 and fast == slow and fast[0].index(b"one") < fast[0].index(b"two")
    assert fast[1].count(b"200 OK") == 2


@needs_native
def test_an_ejected_or_unhealthy_replica_is_never_chosen_by_the_lane() -> None:
    async def run() -> tuple[int, bytes]:
        bench = _Bench(True)
        bench.replica.ejected_until = time.monotonic() + 60
        _, answer = await bench.exchange(_request())
        return bench.gw.fast.taken, answer

    taken, answer = asyncio.run(run())
    assert taken == 0 and answer.startswith(b"HTTP/1.1 503")


@needs_native
def test_mutated_requests_never_break_the_lane_and_what_it_takes_llhttp_takes_the_same() -> None:
    """3,000 random mutations (a byte changed, inserted or removed; a header line duplicated or its case flipped)
    of valid requests: the lane takes some, declines the others; for each one it takes, the Python path alone
    sends the replica the same bytes and answers the same."""
    rng = random.Random(7)
    seeds = list(TAKEN.values())
    alphabet = b"\r\n :\t-aAzZ09\x00\x7f\xff/?"
    took = 0
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            kind = rng.random()
            if kind < 0.4:
                data[at] = rng.choice(alphabet)
            elif kind < 0.6:
                data[at:at] = bytes([rng.choice(alphabet)])
            elif kind < 0.8:
                del data[at]
            else:
                lines = bytes(data).split(b"\r\n")
                i = rng.randrange(1, max(2, len(lines) - 2))
                lines.insert(i, lines[i].swapcase() if rng.random() < 0.5 else lines[i])
                data = bytearray(b"\r\n".join(lines))
        fast, slow, taken = _both(bytes(data))
        if taken:
            took += 1
            assert fast == slow, bytes(data)
    print(f"the lane took {took} of 3000")
    assert 100 < took < 3000  # both sides of the lane were exercised


def test_without_the_compiled_twins_the_same_code_passes_as_python(tmp_path: Any) -> None:
    """The fallback for machines without a compiler: the HTTP layer's and the gateway's token tests, as Python."""
    import subprocess
    import sys

    env = {**os.environ, "ARCHIPEL_PURE_PYTHON": "1"}
    probe = "import archipel.serving.gateway as g, archipel.serving.http1 as h; print(g.COMPILED, h.COMPILED)"
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]  # fmt: skip
    here = os.path.dirname(__file__)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path}",
         os.path.join(here, "test_http1.py"), os.path.join(here, "test_gateway_tokens.py")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
