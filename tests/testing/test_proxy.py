"""FaultProxy against real servers on 127.0.0.1: an echo server, an HTTP server and the CLI as a process."""

from __future__ import annotations

import contextlib
import gc
import http.client
import http.server
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from archipel.testing.proxy import READ_SIZE, FaultProxy, Faults

LOCALHOST = "127.0.0.1"
# An explicit empty ProxyHandler: an http_proxy in the environment must not reroute these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the proxy resets connections on purpose
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _BytesHandler(http.server.BaseHTTPRequestHandler):
    """``GET /<n>`` answers n bytes."""

    def do_GET(self) -> None:
        size = int(self.path.strip("/"))
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(b"x" * size)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Quiet:
    """Threaded servers that join their handler threads on close and stay silent about reset clients."""

    daemon_threads = False
    block_on_close = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)  # type: ignore[misc]


class _EchoServer(_Quiet, socketserver.ThreadingTCPServer):
    pass


class _HTTPServer(_Quiet, http.server.ThreadingHTTPServer):
    pass


@contextlib.contextmanager
def _running(server: socketserver.TCPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def echo_port() -> Iterator[int]:
    with _running(_EchoServer((LOCALHOST, 0), _EchoHandler)) as port:
        yield port


@pytest.fixture
def http_port() -> Iterator[int]:
    with _running(_HTTPServer((LOCALHOST, 0), _BytesHandler)) as port:
        yield port


def _fetch(port: int, size: int) -> bytes:
    with _OPENER.open(f"http://{LOCALHOST}:{port}/{size}", timeout=10) as response:
        body: bytes = response.read()
    return body


def _timed_fetch(port: int, size: int) -> float:
    started = time.perf_counter()
    assert len(_fetch(port, size)) == size
    return time.perf_counter() - started


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return data


def _round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.perf_counter()
    sock.sendall(payload)
    assert _recv_exactly(sock, len(payload)) == payload
    return time.perf_counter() - started


def _connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((LOCALHOST, port), timeout=timeout)


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_pass_through_echoes_bytes_unchanged_and_counts_them(echo_port: int) -> None:
    payload = os.urandom(200_000)
    with FaultProxy((LOCALHOST, echo_port)) as proxy:
        with _connect(proxy.port) as sock:
            sock.sendall(payload)
            assert _recv_exactly(sock, len(payload)) == payload
            assert proxy.connections_active == 1
        _wait_for(lambda: proxy.connections_active == 0)
        assert proxy.bytes_up == len(payload)
        assert proxy.bytes_down == len(payload)
        assert proxy.connections_total == 1


def test_latency_is_added_to_each_direction(echo_port: int) -> None:
    with _connect(echo_port) as direct:
        direct_rtt = min(_round_trip(direct) for _ in range(3))
    with (
        FaultProxy((LOCALHOST, echo_port), faults=Faults(latency_s=0.05)) as proxy,
        _connect(proxy.port) as sock,
    ):
        proxied_rtt = min(_round_trip(sock) for _ in range(2))
    assert proxied_rtt - direct_rtt >= 0.095
    assert proxied_rtt < 2.0


def test_bulk_transfer_pays_latency_once_per_round_trip_not_per_chunk(http_port: int) -> None:
    size, latency = 5 * 1024 * 1024, 0.02
    with FaultProxy((LOCALHOST, http_port), faults=Faults(latency_s=latency)) as proxy:
        elapsed = _timed_fetch(proxy.port, size)
        assert proxy.bytes_down > size
    chunks = size // READ_SIZE  # the proxy reads at most READ_SIZE at a time: at least this many chunks
    assert elapsed >= 2 * latency * 0.95
    assert elapsed < chunks * latency / 2, f"{elapsed:.3f} s: latency looks paid per chunk"


def test_bandwidth_cap_paces_a_download(http_port: int) -> None:
    size, bps = 500_000, 4_000_000
    direct = _timed_fetch(http_port, size)
    with FaultProxy((LOCALHOST, http_port), faults=Faults(bandwidth_bps=bps)) as proxy:
        capped = _timed_fetch(proxy.port, size)
    assert capped >= 0.9 * size * 8 / bps
    assert capped > 3 * direct
    assert capped < 10.0


def test_reset_resets_existing_and_new_connections_until_pass(echo_port: int) -> None:
    with FaultProxy((LOCALHOST, echo_port)) as proxy:
        with _connect(proxy.port) as existing:
            _round_trip(existing)
            proxy.configure(mode="reset")
            with pytest.raises(ConnectionResetError):
                existing.recv(1)
        with pytest.raises(ConnectionResetError), _connect(proxy.port) as new:  # connect() itself may see it
            new.sendall(b"ping")
            new.recv(1)
        proxy.configure(mode="pass")
        with _connect(proxy.port) as again:
            _round_trip(again)
        assert proxy.connections_total == 3


def test_blackhole_answers_nothing_and_releases_held_data_on_pass(echo_port: int) -> None:
    with FaultProxy((LOCALHOST, echo_port)) as proxy, _connect(proxy.port) as existing:
        _round_trip(existing)
        proxy.configure(mode="blackhole")
        existing.sendall(b"held")
        existing.settimeout(0.3)
        with pytest.raises(TimeoutError):
            existing.recv(4)
        with _connect(proxy.port, timeout=0.5) as new:
            new.sendall(b"ping")
            with pytest.raises(TimeoutError):
                new.recv(4)
            proxy.configure(mode="pass")  # as TCP would retransmit, what was held now flows
            new.settimeout(5)
            existing.settimeout(5)
            assert _recv_exactly(new, 4) == b"ping"
            assert _recv_exactly(existing, 4) == b"held"


def test_refuse_closes_the_port_and_pass_reopens_the_same_one(echo_port: int) -> None:
    with FaultProxy((LOCALHOST, echo_port)) as proxy:
        port = proxy.port
        with _connect(port) as existing:
            _round_trip(existing)
            proxy.configure(mode="refuse")
            with pytest.raises(ConnectionRefusedError):
                _connect(port).close()
            with pytest.raises(ConnectionResetError):
                existing.recv(1)
        proxy.configure(mode="pass")
        assert proxy.port == port
        with _connect(port) as again:
            _round_trip(again)


def test_reset_after_bytes_cuts_a_download_midway(http_port: int) -> None:
    limit = 100_000
    with FaultProxy((LOCALHOST, http_port), faults=Faults(reset_after_bytes=limit)) as proxy:
        with pytest.raises((ConnectionError, http.client.IncompleteRead, urllib.error.URLError)):
            _fetch(proxy.port, 1_000_000)
        assert 0 < proxy.bytes_down <= limit
        received = 0
        with _connect(proxy.port) as sock, pytest.raises(ConnectionResetError):
            sock.sendall(b"GET /1000000 HTTP/1.0\r\n\r\n")
            while chunk := sock.recv(65536):
                received += len(chunk)
        assert received <= limit


def test_a_target_that_is_down_resets_the_client() -> None:
    with socket.socket() as placeholder:  # a port that was free a moment ago and has no listener now
        placeholder.bind((LOCALHOST, 0))
        dead_port = placeholder.getsockname()[1]
    with FaultProxy((LOCALHOST, dead_port)) as proxy:
        with pytest.raises(ConnectionResetError), _connect(proxy.port) as sock:
            sock.sendall(b"ping")
            sock.recv(1)
        _wait_for(lambda: proxy.connections_active == 0)


def test_jitter_never_reorders(echo_port: int) -> None:
    messages = [f"{i:04d}".encode() for i in range(30)]
    with (
        FaultProxy((LOCALHOST, echo_port), faults=Faults(latency_s=0.005, jitter_s=0.02)) as proxy,
        _connect(proxy.port) as sock,
    ):
        for message in messages:
            sock.sendall(message)
            time.sleep(0.002)  # separate chunks, each with its own draw of jitter
        assert _recv_exactly(sock, 4 * len(messages)) == b"".join(messages)


def test_faults_are_validated_and_a_bad_change_changes_nothing(echo_port: int) -> None:
    for bad in ({"latency_s": -1}, {"jitter_s": -0.1}, {"bandwidth_bps": 0}, {"reset_after_bytes": -1}):
        with pytest.raises(ValueError):
            Faults(**bad)
    with FaultProxy((LOCALHOST, echo_port), faults=Faults(latency_s=0.01)) as proxy:
        with pytest.raises(ValueError, match="mode"):
            proxy.configure(mode="flaky")  # type: ignore[arg-type]
        assert proxy.faults == Faults(latency_s=0.01)
        assert proxy.configure(bandwidth_bps=1e9) == Faults(latency_s=0.01, bandwidth_bps=1e9)
        assert proxy.configure(bandwidth_bps=None).bandwidth_bps is None


def test_stop_closes_connections_and_leaves_no_thread(echo_port: int) -> None:
    proxy = FaultProxy((LOCALHOST, echo_port)).start()
    with _connect(proxy.port) as sock:
        _round_trip(sock)
        proxy.stop()
        assert sock.recv(1) == b""
    proxy.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy.port).close()
    assert not [t for t in threading.enumerate() if t.name.startswith("FaultProxy")]
    assert proxy.connections_active == 0
    gc.collect()  # an unclosed socket or transport would surface here as a ResourceWarning (an error)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_until_signalled(http_port: int, stop_signal: signal.Signals) -> None:
    command = [sys.executable, "-m", "archipel.testing.proxy", "--target", f"{LOCALHOST}:{http_port}"]
    command += ["--latency-ms", "5", "--bandwidth-mbps", "100"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("LISTENING "), line
            assert _fetch(int(line.split()[1]), 10_000) == b"x" * 10_000
            process.send_signal(stop_signal)
            _, stderr = process.communicate(timeout=10)
            assert process.returncode == 0, stderr
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
