"""netns_forward as a process, in this network namespace: it serves the listening socket it was handed."""

from __future__ import annotations

import contextlib
import http.server
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Echo(http.server.BaseHTTPRequestHandler):
    """``POST`` answers the body it was sent; ``GET /close`` answers, then closes the connection."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def target() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def _forwarder(target_port: int) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "archipel.testing.netns_forward",
                f"--listen-fd={listener.fileno()}",
                f"--target=127.0.0.1:{target_port}",
            ],
            pass_fds=[listener.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        port = listener.getsockname()[1]
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"FORWARDING {port}\n"
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _post(port: int, body: bytes) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST")
    with _OPENER.open(request, timeout=10) as response:
        return response.read()


def test_forwards_requests_and_stops_cleanly_on_sigterm(target: int) -> None:
    with _forwarder(target) as (port, proc):
        big = bytes(range(256)) * 4096  # 1 MiB, several reads each way
        assert _post(port, big) == big
        with ThreadPoolExecutor(8) as pool:
            bodies = [f"request {i}".encode() for i in range(64)]
            assert list(pool.map(lambda b: _post(port, b), bodies)) == bodies
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert err == ""  # nothing ignored, nothing leaked


def test_an_unreachable_target_resets_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with _forwarder(closed) as (port, proc):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(1) == b""
        assert proc.poll() is None  # still serving
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and err == ""


def test_refuses_a_descriptor_that_is_not_a_listening_socket() -> None:
    with socket.socket() as unbound:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "archipel.testing.netns_forward",
                f"--listen-fd={unbound.fileno()}",
                "--target=h:1",
            ],
            pass_fds=[unbound.fileno()],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2 and "not a listening socket" in done.stderr
