"""A real Ray head for the Ray backend's tests, in a network namespace of its own (one per test session).

Ray 2.60 binds the host's external interface even with ``--node-ip-address=127.0.0.1`` (see shared FACTS), so
the head runs in a network namespace that has nothing but loopback, where everything it opens is on 127.0.0.1.
That loopback is the namespace's own, though: the tests reach the dashboard through
:mod:`archipel.testing.netns_forward`, started inside the namespace with a listening socket created on the
*host's* 127.0.0.1 (a socket stays in the namespace it was created in), which it forwards to the dashboard on
the namespace's 127.0.0.1:8265. No interface or route joins the two namespaces.

The head is stopped by pid: every process in the namespace (``ip netns pids``, which also catches jobs still
running) gets SIGTERM, then SIGKILL after a grace; then the namespace and Ray's temp directory are removed.
``ray stop`` is not used: it kills Ray processes by name, anyone's, in every namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require

DASHBOARD_PORT = 8265
"""Inside the namespace, where no other process can hold it."""
HEAD_CPUS = 4
"""Logical cpus the head offers Ray jobs (the conformance suite runs at most 3 cpus of jobs at once)."""
HEAD_GPUS = 1
"""A pretend GPU (Ray only counts it), so jobs asking for an ``A100`` can be scheduled."""
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 1.0


@dataclass(frozen=True)
class RayHead:
    """A running Ray head: ``address`` is its Jobs API on the host's loopback."""

    address: str
    netns: str
    temp_dir: Path
    forward_port: int
    started_in_s: float


def _run(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def netns_pids(netns: str) -> list[int]:
    """Every process whose network namespace is ``netns``."""
    out = _run("ip", "netns", "pids", netns)
    return [int(pid) for pid in out.stdout.split()] if out.returncode == 0 else []


def _stop_netns(netns: str) -> None:
    """SIGTERM every process in ``netns``, SIGKILL what is left after a grace, then delete the namespace."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        pids = netns_pids(netns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = netns_pids(netns)
        if not pids:
            break
    _run("ip", "netns", "delete", netns)


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _job_state(address: str, job: str) -> str:
    details = _get_json(f"{address}/api/jobs/{job}")
    assert isinstance(details, dict)
    return str(details["status"])


def _warm_up(address: str, deadline: float) -> None:
    """Wait until the Jobs API answers and has run one job (its agent is up), then delete that job."""
    while True:
        try:
            _get_json(f"{address}/api/jobs/")
            break
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    job = f"warm-up-{os.getpid()}"
    body = json.dumps({"entrypoint": "true", "submission_id": job}).encode()
    request = urllib.request.Request(
        f"{address}/api/jobs/", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30):
        pass
    while (state := _job_state(address, job)) not in ("SUCCEEDED", "FAILED"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the warm-up job is still {state}")
        time.sleep(0.1)
    if state != "SUCCEEDED":
        raise RuntimeError(f"the warm-up job ended {state}")
    with urllib.request.urlopen(
        urllib.request.Request(f"{address}/api/jobs/{job}", method="DELETE"), timeout=10
    ):
        pass


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """One Ray head for the session, reached at ``RayHead.address`` (see the module docstring for how).

    A missing Ray, ``ip`` or root skips the tests that need the head (fails them under ``CI=true``).
    """
    bindir = Path(sys.executable).parent
    if not (bindir / "ray").exists():
        require("Ray head", f"no `ray` command in {bindir} (pip install 'archipel[ray]')")
    if shutil.which("ip") is None or os.geteuid() != 0:
        require("Ray head", "a network namespace for the head needs root and iproute2 (`ip netns`)")
    netns = f"archipel-ray-{os.getpid()}"
    # A short path: Ray's unix sockets live under it, and their paths may not exceed 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="archipel-ray-", dir="/tmp"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",  # Ray jobs run the `python` on PATH
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    in_netns = ["ip", "netns", "exec", netns]
    forwarder: subprocess.Popen[str] | None = None
    start = time.monotonic()
    made = _run("ip", "netns", "add", netns)
    if made.returncode != 0:
        shutil.rmtree(temp_dir, ignore_errors=True)
        require("Ray head", f"cannot create network namespace {netns}: {made.stderr.strip()}")
    try:
        lo = _run(*in_netns, "ip", "link", "set", "lo", "up")
        assert lo.returncode == 0, lo.stderr
        head = subprocess.run(
            [
                *in_netns,
                str(bindir / "ray"),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={DASHBOARD_PORT}",
                "--port=6379",
                f"--num-cpus={HEAD_CPUS}",
                f"--num-gpus={HEAD_GPUS}",
                '--resources={"accelerator_type:A100": 1}',
                "--object-store-memory=100000000",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
            ],
            env=env,
            cwd=temp_dir,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            start_new_session=True,
            check=False,
        )
        if head.returncode != 0:
            pytest.fail(
                f"`ray start --head` failed ({head.returncode}):\n{head.stderr[-3000:]}", pytrace=False
            )
        with socket.create_server(("127.0.0.1", 0)) as listener:
            forwarder = subprocess.Popen(
                [
                    *in_netns,
                    sys.executable,
                    "-m",
                    "archipel.testing.netns_forward",
                    f"--listen-fd={listener.fileno()}",
                    f"--target=127.0.0.1:{DASHBOARD_PORT}",
                ],
                pass_fds=[listener.fileno()],
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            port = listener.getsockname()[1]
        assert forwarder.stdout is not None
        ready = forwarder.stdout.readline()
        assert ready == f"FORWARDING {port}\n", f"the forwarder said {ready!r}"
        address = f"http://127.0.0.1:{port}"
        _warm_up(address, time.monotonic() + START_TIMEOUT_S)
        yield RayHead(address, netns, temp_dir, port, time.monotonic() - start)
    finally:
        _stop_netns(netns)
        if forwarder is not None:  # killed with the namespace's other processes: reap it
            forwarder.wait(timeout=10)
            assert forwarder.stdout is not None
            forwarder.stdout.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
