"""RayJobsCompute: the conformance suite against a real Ray head, plus what only the Ray mapping shows.

Tests marked ``ray`` use the session's Ray head (``conftest.ray_head``); the others need no Ray: they check
what is refused before any request, how an unreachable cluster surfaces, and how Ray's records map onto
archipel's, against a canned Jobs API.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from archipel.backends.compute.base import ComputeBackend, JobState, LaunchRequest, Resources
from archipel.backends.compute.ray import RayJobsCompute
from archipel.errors import ComputeError, Conflict, NotFound, SiteUnavailable, SpecError
from tests.conformance.compute import BackendFactory, ComputeConformance, process_gone, wait_for
from tests.ray_head import RayHead, netns_pids

MakeBackend = Callable[..., ComputeBackend]
STOP_GRACE_S = 1
"""Ray's SIGTERM-to-SIGKILL time for the tests' jobs; Ray 2.60 waits it out on every stop."""


def _ray(backend: ComputeBackend) -> RayJobsCompute:
    assert isinstance(backend, RayJobsCompute)
    return backend


def _raw(head: RayHead, method: str, path: str, body: object | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        head.address + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.ray
class TestRayJobsCompute(ComputeConformance):
    processes_are_local = False  # Ray's records carry no pid of the entrypoint

    @pytest.fixture
    def backend_factory(self, ray_head: RayHead, tmp_path: Path) -> BackendFactory:
        counter = iter(range(1000))
        return lambda capacity: RayJobsCompute(
            ray_head.address, tmp_path / f"state-{next(counter)}", capacity, stop_grace_s=STOP_GRACE_S
        )

    # -- the head itself -------------------------------------------------------------------------------------

    def test_the_head_listens_on_loopback_only(self, ray_head: RayHead) -> None:
        inside = subprocess.run(
            ["ip", "netns", "exec", ray_head.netns, "ss", "-ltnH"], capture_output=True, text=True, check=True
        )
        local = [line.split()[3] for line in inside.stdout.splitlines()]
        assert f"127.0.0.1:{8265}" in local
        assert all(re.fullmatch(r"(127\.0\.0\.1|\[::1\]|\[::ffff:127\.0\.0\.1\]):\d+", a) for a in local), (
            local
        )
        # On the host, the namespace's processes hold one socket: the forwarder's, on the host's loopback.
        host = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
        ours = {f"pid={pid}," for pid in netns_pids(ray_head.netns)}
        held = [line.split()[3] for line in host.stdout.splitlines() if any(p in line for p in ours)]
        assert held == [f"127.0.0.1:{ray_head.forward_port}"]

    # -- Ray specifics ---------------------------------------------------------------------------------------

    def test_cancel_kills_what_the_job_started(self, backend: ComputeBackend) -> None:
        # The head runs on this machine, so its jobs' processes can be watched from here.
        job = backend.launch(LaunchRequest(command="sleep 60 & echo $!; wait"))
        wait_for(lambda: backend.logs(job)[0].strip() != "", timeout_s=15)
        grandchild = int(backend.logs(job)[0].strip())
        assert not process_gone(grandchild)
        status = backend.cancel(job)
        assert status.state is JobState.CANCELLED and status.exit_code is None
        assert "cancelled" in status.message
        wait_for(lambda: process_gone(grandchild))

    def test_a_missing_workdir_fails_the_job(self, backend: ComputeBackend, tmp_path: Path) -> None:
        job = backend.launch(LaunchRequest(command="echo never", workdir=str(tmp_path / "absent")))
        status = backend.wait(job, timeout_s=15)
        assert status.state is JobState.FAILED and status.exit_code == 2
        text = backend.logs(job)[0]
        assert "absent" in text and "never" not in text

    def test_logs_cut_at_character_boundaries(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command=["printf", "é€x"]))
        backend.wait(job, timeout_s=15)
        assert backend.logs(job) == ("é€x", 6)
        assert backend.logs(job, 0, max_bytes=4) == ("é", 2)
        assert backend.logs(job, 2, max_bytes=3) == ("€", 5)
        assert backend.logs(job, 1) == ("\ufffd€x", 6)  # an offset inside a character
        assert backend.logs(job, 2, max_bytes=1)[1] == 3  # less than a character: progress regardless

    def test_env_and_metadata_reach_ray(self, backend: ComputeBackend, ray_head: RayHead) -> None:
        job = backend.launch(LaunchRequest(command="true", name="Shaped", env={"K": "v"}, labels={"a": "b"}))
        backend.wait(job, timeout_s=15)
        details = _raw(ray_head, "GET", f"/api/jobs/{job}")
        assert details["entrypoint"] == r"printf '\036archipel\n' && exec /bin/sh -c true"
        assert details["runtime_env"]["env_vars"] == {
            "K": "v",
            "ARCHIPEL_JOB_ID": job,
            "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S),
        }
        assert details["metadata"]["archipel.name"] == "Shaped"
        assert json.loads(details["metadata"]["archipel.labels"]) == {"a": "b"}

    def test_ray_schedules_the_resources_asked_for(self, make_backend: MakeBackend) -> None:
        # archipel's capacity lets all three through; Ray's head (4 cpus, 1 GPU of type A100) decides.
        backend = make_backend(Resources(cpus=16, memory_bytes=2**40, accelerators={"A100": 1, "T4": 1}))
        a100 = Resources(cpus=0.5, memory_bytes=2**20, accelerators={"A100": 1})
        gpu = backend.launch(LaunchRequest(command='echo "gpu=$CUDA_VISIBLE_DEVICES"', resources=a100))
        too_many_cpus = backend.launch(LaunchRequest(command="true", resources=Resources(cpus=5)))
        no_such_gpu = backend.launch(
            LaunchRequest(command="true", resources=Resources(accelerators={"T4": 1}))
        )
        assert backend.wait(gpu, timeout_s=15).state is JobState.SUCCEEDED
        assert backend.logs(gpu)[0] == "gpu=0\n"  # Ray gave the job its (pretend) GPU
        time.sleep(0.5)
        for job in (too_many_cpus, no_such_gpu):
            status = backend.status(job)
            assert status.state is JobState.PENDING and "waiting for resources" in status.message

    def test_cancel_a_job_waiting_for_resources(self, make_backend: MakeBackend) -> None:
        backend = make_backend(Resources(cpus=16))
        job = backend.launch(LaunchRequest(command="echo ran", resources=Resources(cpus=5)))  # head has 4
        start = time.monotonic()
        status = backend.cancel(job)
        assert time.monotonic() - start < 6
        assert status.state is JobState.CANCELLED and "waiting to be scheduled" in status.message
        assert backend.status(job) == status
        assert backend.list_jobs() == [status]
        assert _ray(backend).in_use() == Resources(cpus=0)
        with pytest.raises(Conflict, match="Ray still holds it PENDING"):
            _ray(backend).forget(job)
        assert backend.logs(job) == ("", 0)

    def test_each_state_dir_sees_only_its_own_jobs(
        self, make_backend: MakeBackend, ray_head: RayHead, tmp_path: Path
    ) -> None:
        mine, theirs = make_backend(), make_backend()
        job = mine.launch(LaunchRequest(command="true"))
        mine.wait(job, timeout_s=15)
        assert [s.job_id for s in mine.list_jobs()] == [job]
        assert theirs.list_jobs() == []  # no launch yet: not even a request
        theirs.wait(theirs.launch(LaunchRequest(command="true")), timeout_s=15)
        for call in (theirs.status, theirs.logs, theirs.cancel):
            with pytest.raises(NotFound):
                call(job)
        # A job submitted to the cluster by someone else is not ours either, nor is a Ray job id.
        foreign = _raw(
            ray_head, "POST", "/api/jobs/", {"entrypoint": "true", "submission_id": "foreign-job-1"}
        )
        assert foreign["submission_id"] == "foreign-job-1"
        with pytest.raises(NotFound):
            mine.status("foreign-job-1")
        assert "foreign-job-1" not in {s.job_id for s in mine.list_jobs()}
        # The same state directory, opened again, is the same scope.
        again = RayJobsCompute.from_address(
            ray_head.address, state_dir=_ray(mine).state_dir, capacity=Resources(cpus=4)
        )
        assert again.status(job).state is JobState.SUCCEEDED

    def test_forget(self, backend: ComputeBackend) -> None:
        ray = _ray(backend)
        assert "forget" in type(ray).features()
        running = ray.launch(LaunchRequest(command="sleep 30"))
        with pytest.raises(Conflict, match="cancel it"):
            ray.forget(running)
        ended = ray.launch(LaunchRequest(command="true"))
        ray.wait(ended, timeout_s=15)
        ray.forget(ended)
        with pytest.raises(NotFound):
            ray.status(ended)
        assert [s.job_id for s in ray.list_jobs()] == [running]

    def test_open_compute_reaches_the_head(self, ray_head: RayHead, tmp_path: Path) -> None:
        from archipel.backends.compute.registry import open_compute

        uri = ray_head.address.replace("http://", "ray+http://")
        backend = open_compute(uri, state_dir=tmp_path, cpus=1, memory_bytes=0, accelerators={})
        job = backend.launch(LaunchRequest(command="echo via-uri", resources=Resources(cpus=0)))
        assert backend.wait(job, timeout_s=15).state is JobState.SUCCEEDED
        assert backend.logs(job)[0] == "via-uri\n"
        _ray(backend).forget(job)


# -- without a Ray head --------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refusals_come_before_any_request(tmp_path: Path) -> None:
    backend = RayJobsCompute(f"http://127.0.0.1:{_closed_port()}", tmp_path, Resources(cpus=2))
    with pytest.raises(SpecError, match="absolute path"):
        backend.launch(LaunchRequest(command="true", workdir="relative/dir"))
    with pytest.raises(SpecError, match="one accelerator type"):
        backend.launch(LaunchRequest(command="true", resources=Resources(accelerators={"A100": 1, "T4": 1})))
    for bad in ("ray://h:1", "h:8265", "", "http://"):
        with pytest.raises(SpecError, match="http://HOST:PORT"):
            RayJobsCompute(bad, tmp_path, Resources())
    with pytest.raises(SpecError, match="whole number"):
        RayJobsCompute("http://h:1", tmp_path, Resources(), stop_grace_s=0.5)  # type: ignore[arg-type]


def test_a_cluster_that_does_not_answer_is_unavailable(tmp_path: Path) -> None:
    refused = RayJobsCompute(f"http://127.0.0.1:{_closed_port()}", tmp_path / "a", Resources())
    with pytest.raises(SiteUnavailable, match=r"does not answer.*refused"):
        refused.launch(LaunchRequest(command="true"))
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog) but never answers
        port = silent.getsockname()[1]
        mute = RayJobsCompute(f"http://127.0.0.1:{port}", tmp_path / "b", Resources(), timeout_s=0.2)
        start = time.monotonic()
        with pytest.raises(SiteUnavailable, match=r"no answer within 0\.2 s"):
            mute.launch(LaunchRequest(command="true"))
        assert time.monotonic() - start < 2


class _CannedJobsApi(BaseHTTPRequestHandler):
    """Answers ``GET`` with ``routes[path]``: a ``(status, body)`` pair."""

    routes: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, b"Job does not exist"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def canned(tmp_path: Path) -> Iterator[tuple[RayJobsCompute, dict[str, tuple[int, bytes]]]]:
    """A backend whose scope is ``s``, talking to a canned Jobs API; fill the routes to answer."""
    routes: ClassVar[dict[str, tuple[int, bytes]]] = {}
    handler = type("Handler", (_CannedJobsApi,), {"routes": routes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    (tmp_path / "scope").write_text("s\n")
    try:
        yield RayJobsCompute(f"http://127.0.0.1:{server.server_port}", tmp_path, Resources()), routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _details(job_id: str, **fields: Any) -> bytes:
    record = {
        "type": "SUBMISSION",
        "submission_id": job_id,
        "status": "RUNNING",
        "entrypoint": "exec true",
        "message": "",
        "start_time": 1_000_000,
        "end_time": None,
        "metadata": {"archipel.scope": "s", "archipel.name": "n", "archipel.created_at": "1.5"},
        **fields,
    }
    return json.dumps(record).encode()


def test_ray_records_map_onto_archipel_states(
    canned: tuple[RayJobsCompute, dict[str, tuple[int, bytes]]],
) -> None:
    backend, routes = canned
    routes["/api/jobs/lost-1"] = (
        200,
        _details(
            "lost-1",
            status="FAILED",
            error_type="JOB_SUPERVISOR_ACTOR_DIED",
            message="Job supervisor actor died",
            end_time=2_000_000,
        ),
    )
    routes["/api/jobs/killed-1"] = (
        200,
        _details("killed-1", status="FAILED", driver_exit_code=-9, end_time=1),
    )
    routes["/api/jobs/pending-1"] = (200, _details("pending-1", status="PENDING"))
    routes["/api/jobs/odd-1"] = (200, _details("odd-1", status="PAUSED"))
    lost = backend.status("lost-1")
    assert lost.state is JobState.LOST and lost.message == "Job supervisor actor died"
    assert (lost.started_at, lost.ended_at, lost.name) == (1000.0, 2000.0, "n")
    assert backend.status("killed-1").message == "killed by SIGKILL"
    pending = backend.status("pending-1")
    assert pending.state is JobState.PENDING and pending.started_at is None
    with pytest.raises(ComputeError, match="PAUSED"):
        backend.status("odd-1")


def test_foreign_records_and_errors(canned: tuple[RayJobsCompute, dict[str, tuple[int, bytes]]]) -> None:
    backend, routes = canned
    routes["/api/jobs/other-1"] = (200, _details("other-1", metadata={"archipel.scope": "t"}))
    routes["/api/jobs/02000000"] = (200, _details("raysubmit-x"))  # Ray also finds jobs by its own ids
    routes["/api/jobs/driver-1"] = (200, _details("driver-1", type="DRIVER"))
    for job in ("other-1", "02000000", "driver-1", "absent-1"):
        with pytest.raises(NotFound):
            backend.status(job)
    routes["/api/jobs/"] = (500, b"Traceback (most recent call last):\n  ...\nRuntimeError: GCS is down\n")
    with pytest.raises(ComputeError, match=r"HTTP 500: RuntimeError: GCS is down$"):
        backend.list_jobs()
    routes["/api/jobs/"] = (200, b"<html>")
    with pytest.raises(ComputeError, match="not JSON"):
        backend.list_jobs()
    routes["/api/jobs/"] = (200, b"[" + _details("b-1") + b"," + _details("other-1", metadata={}) + b"]")
    assert [s.job_id for s in backend.list_jobs()] == ["b-1"]


def test_logs_hold_the_job_output_only(canned: tuple[RayJobsCompute, dict[str, tuple[int, bytes]]]) -> None:
    backend, routes = canned
    entrypoint = r"printf '\036archipel\n' && exec /bin/sh -c 'echo a; echo b'"
    header = f"Running entrypoint for job late-1: {entrypoint}\n"
    setup = "2026-01-01 00:00:00,000\tINFO job_manager.py:581 -- Runtime env is setting up.\n"
    for job, log in [
        ("early-1", setup + header.replace("late-1", "early-1") + "\x1earchipel\na\nb\n"),
        (
            "late-1",
            setup + "\x1earchipel\na\n" + header + "b\n",
        ),  # Ray flushed its header after the job wrote
        ("pending-1", setup),
    ]:
        routes[f"/api/jobs/{job}"] = (200, _details(job, entrypoint=entrypoint))
        routes[f"/api/jobs/{job}/logs"] = (200, json.dumps({"logs": log}).encode())
    assert backend.logs("early-1") == ("a\nb\n", 4)
    assert backend.logs("late-1") == ("a\nb\n", 4)
    assert backend.logs("late-1", 2) == ("b\n", 4)
    assert backend.logs("pending-1") == ("", 0)
