"""The gateway part of ``serving.py``: an open-loop client, and the processes of three paths to one archipel
replica deployed on a workspace's local site: direct, through a bare byte relay on uvloop (``relay.py``: the floor
of any proxy on this event loop), through archipel's gateway and, when Debian's nginx is installed, through nginx
as a plain keep-alive reverse proxy. ``serving.py`` checks the answers, runs each path
at a fixed rate and renders ``summarize``'s figures; its closed-loop client shares ``response_complete`` and
``cpu_seconds``.

The replica is started by the local compute backend's supervisor, not by the benchmark, so every server process
here is pinned once it is up: all of its threads (threads it starts later inherit the pinning).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archipel.db import connect
from archipel.models.deployment import DeploymentSpec
from archipel.registry.convert import Converted
from archipel.services.apply import apply_plan, plan_apply
from archipel.services.deployments import deploy, down
from archipel.services.init import init_workspace
from archipel.services.models import register_version
from archipel.services.tokens import create_token

NGINX_MISSING = "not installed (make bench installs it)"
SITE, DEPLOYMENT = "local", "cancer"
OPEN_CONNECTIONS, DRAIN_S = 64, 10.0
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close\r\n", re.IGNORECASE)

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    keepalive_requests 1000000;  # the default, 1000, closes client connections mid-run
    upstream replica {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Process:
    """A server of one path: where to send requests, and the process whose CPU the path's row reports."""

    port: int
    pid: int
    proc: subprocess.Popen[str] | None = None  # None: not the benchmark's child (the replica)


@dataclass(frozen=True)
class Paths:
    replica: Process
    gateway: Process
    nginx: Process | None
    relay: Process
    token: str

    def targets(self) -> dict[str, tuple[Process, dict[str, int]]]:
        """Per path, in the order to measure them: its front door, and the processes whose CPU its row reports."""
        out = {"direct": (self.replica, {"replica": self.replica.pid}),
               "relay": (self.relay, {"replica": self.replica.pid, "proxy": self.relay.pid})}  # fmt: skip
        if self.nginx is not None:
            out["nginx"] = (self.nginx, {"replica": self.replica.pid, "proxy": self.nginx.pid})
        out["gateway"] = (self.gateway, {"replica": self.replica.pid, "proxy": self.gateway.pid})
        return out


def response_complete(buffer: bytes) -> bool:
    """Whether ``buffer`` holds a whole response: its Content-Length, or chunked up to the last chunk."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return False
    length = _LENGTH.search(buffer, 0, end)
    if length is not None:
        return len(buffer) >= end + 4 + int(length.group(1))
    return len(buffer) > end + 4 and buffer.endswith(b"\r\n0\r\n\r\n")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of all the threads of ``pid`` so far: utime + stime."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Sender(asyncio.Protocol):
    """One keep-alive connection of the open loop, one request at a time, as ``_OpenLoop`` hands them out."""

    def __init__(self, load: _OpenLoop) -> None:
        self.load, self.buffer, self.scheduled, self.sent = load, b"", 0.0, 0.0
        self.busy = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, scheduled: float) -> None:
        self.buffer, self.scheduled, self.sent, self.busy = b"", scheduled, time.perf_counter(), True
        self.transport.write(self.load.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if response_complete(self.buffer):
            self.busy = False
            head = self.buffer[: self.buffer.find(b"\r\n\r\n") + 2]
            self.load.answered(self, self.buffer.startswith(b"HTTP/1.1 200"), not _CLOSE.search(head))

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)


class _OpenLoop:
    """Requests due on a clock at a fixed rate, whatever the answers: each goes out on an idle connection or, when
    none is idle, waits in a queue for the next one; ``records`` holds (scheduled, sent, answered, 200?) times."""

    def __init__(self, request: bytes) -> None:
        self.request, self.outstanding = request, 0
        self.idle: list[_Sender] = []
        self.queue: collections.deque[float] = collections.deque()
        self.records: list[tuple[float, float, float, bool]] = []
        self.lost_at: list[float] = []  # scheduled times of requests whose connection closed
        self.drained: asyncio.Future[None] | None = None

    def due(self, scheduled: float) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(scheduled)
        else:
            self.queue.append(scheduled)

    def answered(self, conn: _Sender, ok: bool, reusable: bool) -> None:
        self.records.append((conn.scheduled, conn.sent, time.perf_counter(), ok))
        self._done()
        if not reusable:  # the server closes it: the pool shrinks
            return
        if self.queue:
            conn.send(self.queue.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Sender) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.lost_at.append(conn.scheduled)
            self._done()

    def _done(self) -> None:
        self.outstanding -= 1
        if not self.outstanding and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


async def open_loop(port: int, request: bytes, rate: float, seconds: float, warmup: float,
                     pids: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """``rate`` requests a second for ``warmup`` + ``seconds``, sent on time whatever the answers (open loop);
    the figures are of the requests scheduled after the warm-up, latency from each one's scheduled send time
    (so it includes any wait in the client for a free connection; ``lag``: from scheduled to written); CPU of each
    process in ``pids`` per request answered while the window was open. Errors: answers other than 200, and
    requests whose connection closed or still unanswered ``DRAIN_S`` after the last send (``unfinished``)."""
    loop, load = asyncio.get_running_loop(), _OpenLoop(request)
    conns = [(await loop.create_connection(lambda: _Sender(load), "127.0.0.1", port))[1]
             for _ in range(OPEN_CONNECTIONS)]  # fmt: skip
    load.idle = list(conns)

    def sample() -> tuple[float, dict[str, float]]:
        return time.perf_counter(), {name: cpu_seconds(pid) for name, pid in pids.items()}

    start = time.perf_counter() + 0.01
    opens, closes, total = start + warmup, start + warmup + seconds, round((warmup + seconds) * rate)
    samples, i = [], 0
    while i < total:
        now = time.perf_counter()
        if not samples and now >= opens:
            samples.append(sample())
        while i < total and start + i / rate <= now:
            load.due(start + i / rate)
            i += 1
        wait = start + i / rate - time.perf_counter()
        # loop timers tick in whole ms, so sleeping on them would send in bursts, late: spin the last 1.5 ms
        await asyncio.sleep(wait - 0.0015 if wait > 0.002 else 0)
    (t0, cpu0), (t1, cpu1) = samples[0], sample()
    if load.outstanding:
        load.drained = loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.drained, DRAIN_S)
    unanswered = [*load.lost_at, *load.queue, *(c.scheduled for c in conns if c.busy)]
    for conn in conns:
        conn.transport.close()
    window = np.array([r for r in load.records if opens <= r[0] < closes]).reshape(-1, 4)
    non_200 = int(len(window) - window[:, 3].sum())
    unfinished = sum(opens <= scheduled < closes for scheduled in unanswered)
    answered = sum(t0 <= r[2] < t1 for r in load.records)  # in the window, whenever scheduled: for CPU
    row = {"rate_req_per_s": rate, "requests": len(window) + unfinished, "errors": non_200 + unfinished,
           "non_200": non_200, "unfinished": unfinished, "seconds": round(t1 - t0, 4),
           "req_per_s": round(answered / (t1 - t0), 1)}  # fmt: skip
    if len(window):
        latency, lag = (window[:, 2] - window[:, 0]) * 1e3, (window[:, 1] - window[:, 0]) * 1e3
        p50, p99 = np.percentile(latency, [50, 99])
        row |= {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4),
                "lag_p99_ms": round(float(np.percentile(lag, 99)), 4)}  # fmt: skip
    for name in pids:
        used = cpu1[name] - cpu0[name]
        row[f"{name}_cpu_us_per_req"] = round(used / max(answered, 1) * 1e6, 2)
        row[f"{name}_cpu_pct"] = round(used / (t1 - t0) * 100, 1)
    return row


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for several turns of a path at the same rate: counts summed (errors, requests), figures the median
    of the turns', and the proxy's CPU a request of each turn (``proxy_cpu_us_per_req_rounds``)."""
    summed = ("requests", "errors", "non_200", "unfinished")
    row: dict[str, Any] = {"rounds": len(rounds)}
    for key in rounds[0]:
        values = [r[key] for r in rounds if key in r]
        row[key] = sum(values) if key in summed else round(float(np.median(values)), 4)
    if "proxy_cpu_us_per_req" in rounds[0]:
        row["proxy_cpu_us_per_req_rounds"] = [r["proxy_cpu_us_per_req"] for r in rounds]
    return row


def nginx_version() -> str | None:
    """nginx's version if it is installed, else None."""
    if shutil.which("nginx") is None:
        return None
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().removeprefix("nginx version: nginx/")


def pin(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` on ``cpu`` (no-op on one CPU)."""
    if (os.cpu_count() or 1) < 2:
        return
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(task), {cpu})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.005)
    raise RuntimeError(f"nothing listens on port {port} (exit code {proc.poll()}): {proc.communicate()[1]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def _gateway(root: Path) -> Process:
    argv = [sys.executable, "-m", "archipel.cli", "--workspace", str(root), "gateway", "--port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("LISTENING"):
        raise RuntimeError(f"archipel's gateway did not start: {line}{proc.communicate()[1]}")
    return Process(int(line.split()[1]), proc.pid, proc)


def _relay(upstream: int) -> Process:
    """``relay.py``: bytes copied both ways, the floor of any proxy on uvloop."""
    argv = [sys.executable, str(Path(__file__).with_name("relay.py")), str(upstream)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("LISTENING"):
        raise RuntimeError(f"the relay did not start: {line}{proc.communicate()[1]}")
    return Process(int(line.split()[1]), proc.pid, proc)


def _nginx(work: Path, upstream: int) -> Process:
    """nginx with one worker; its row reports the worker's CPU (the master only waits)."""
    port = _free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, upstream=upstream, port=port))
    proc = subprocess.Popen(["nginx", "-p", str(work), "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_port(proc, port)  # the master listens before it forks the worker: wait for that too
    children, deadline = Path(f"/proc/{proc.pid}/task/{proc.pid}/children"), time.monotonic() + 10
    while not (workers := children.read_text().split()) and time.monotonic() < deadline:
        time.sleep(0.005)
    if len(workers) != 1:
        _stop(proc)
        raise RuntimeError(f"nginx has {len(workers)} worker processes, expected 1")
    return Process(port, int(workers[0]), proc)


@contextlib.contextmanager
def paths(work: Path, converted: Converted, cpu: int, with_nginx: bool) -> Iterator[Paths]:
    """A workspace with one site, ``local``; the model registered without training data (a ``model`` subject,
    classification internal: the default rule serves it anywhere, so no origin header is needed), deployed with
    one replica there (sampling off, as the other rows), an ``infer`` token, the gateway, and nginx if asked.
    Every server process is pinned to ``cpu``; all are stopped on the way out."""
    ws = init_workspace(work / "ws")
    engine = connect(ws.db_url)
    apply_plan(ws, engine, plan_apply(ws, engine))
    version = register_version(ws, engine, DEPLOYMENT, converted, site=SITE)
    started: list[subprocess.Popen[str] | None] = []
    try:
        spec = DeploymentSpec(name=DEPLOYMENT, model=version.ref, sites=[SITE], sample_rate=0)
        (deployed,) = deploy(ws, engine, spec).replicas
        pid = ws.compute(SITE).status(deployed["job_id"]).pid
        assert pid is not None, "the deployed replica has no process"
        replica = Process(int(deployed["url"].rsplit(":", 1)[1]), pid)
        token = create_token(ws, engine, scope="infer", deployment=DEPLOYMENT)[0]
        gateway = _gateway(ws.root)
        started.append(gateway.proc)
        nginx = _nginx(work, replica.port) if with_nginx else None
        if nginx is not None:
            started.append(nginx.proc)
        relay = _relay(replica.port)
        started.append(relay.proc)
        servers = [replica, gateway, relay, *([nginx] if nginx else [])]
        for pid in {s.pid for s in servers} | {p.pid for p in started if p is not None}:  # and nginx's master
            pin(pid, cpu)
        yield Paths(replica, gateway, nginx, relay, token)
    finally:
        for proc in started:
            if proc is not None:
                _stop(proc)
        down(ws, engine, DEPLOYMENT)
        engine.dispose()


def summarize(rows: list[dict[str, Any]], rate: int, max_rate: float, nginx: str) -> dict[str, Any]:
    """The figures of the three paths and the targets' verdicts: the gateway adds <= 1 ms at p50 to the direct
    path with 0 errors, and costs less CPU per request than nginx."""
    by = {r["path"]: r for r in rows}
    added = {label: round(by[label]["p50_ms"] - by["direct"]["p50_ms"], 4) if "p50_ms" in by[label] else None
             for label in by if label != "direct"}  # fmt: skip
    gateway = by["gateway"]
    fast = added["gateway"] is not None and added["gateway"] <= 1.0 and gateway["errors"] == 0
    cheap = "not measured"
    if "nginx" in by:
        cheap = "MET" if gateway["proxy_cpu_us_per_req"] < by["nginx"]["proxy_cpu_us_per_req"] else "MISSED"
    return {
        "rate_req_per_s": rate,
        "max_req_per_s": max_rate,
        "connections": OPEN_CONNECTIONS,
        "latency_from": "scheduled send time",
        "nginx": nginx,
        "rows": rows,
        "added_p50_ms": added,
        "targets": {"gateway_added_p50": "MET" if fast else "MISSED", "gateway_cpu_below_nginx": cheap},
    }
