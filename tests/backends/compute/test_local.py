"""LocalCompute: the conformance suite, plus what only a local backend can show (processes, files, flock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from archipel.backends.compute import local
from archipel.backends.compute.base import ComputeBackend, JobState, LaunchRequest, Resources
from archipel.backends.compute.local import LocalCompute, _utf8_boundary
from archipel.errors import ComputeError, Conflict, NotFound, SpecError
from tests.conformance.compute import BackendFactory, ComputeConformance, process_gone, wait_for

MakeBackend = Callable[..., ComputeBackend]

_LAUNCHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from archipel.backends.compute.base import LaunchRequest, Resources
    from archipel.backends.compute.local import LocalCompute
    from archipel.errors import NoCapacity

    backend = LocalCompute(Path(sys.argv[1]), Resources(cpus=float(sys.argv[2])))
    request = LaunchRequest(command=sys.argv[3], resources=Resources(cpus=1))
    sys.stdin.readline()  # every launcher starts at the same moment
    try:
        print("launched", backend.launch(request))
    except NoCapacity:
        print("refused")
    """
)


def _launcher(state_dir: Path, cpus: float, command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(state_dir), str(cpus), command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _local(backend: ComputeBackend) -> LocalCompute:
    assert isinstance(backend, LocalCompute)
    return backend


def _ready(backend: ComputeBackend, job: str, marker: str = "ready") -> None:
    wait_for(lambda: marker in backend.logs(job)[0] and backend.status(job).state is JobState.RUNNING)


class TestLocalCompute(ComputeConformance):
    @pytest.fixture
    def backend_factory(self, tmp_path: Path) -> BackendFactory:
        counter = iter(range(1000))
        return lambda capacity: LocalCompute(tmp_path / f"state-{next(counter)}", capacity)

    # -- speed and environment -------------------------------------------------------------------------------

    def test_echo_round_trip_is_fast(self, backend: ComputeBackend) -> None:
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            job = backend.launch(LaunchRequest(command="echo hi", resources=Resources(cpus=0)))
            assert backend.wait(job, timeout_s=10).state is JobState.SUCCEEDED
            timings.append(time.perf_counter() - start)
        assert min(timings) < 0.5, timings

    def test_inherits_the_launcher_environment(
        self, backend: ComputeBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ARCHIPEL_TEST_INHERITED", "from-launcher")
        job = backend.launch(
            LaunchRequest(command='echo "$ARCHIPEL_TEST_INHERITED/$ADDED"', env={"ADDED": "x"})
        )
        backend.wait(job, timeout_s=10)
        assert backend.logs(job)[0] == "from-launcher/x\n"

    def test_default_workdir_is_the_launcher_cwd(
        self, backend: ComputeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        job = backend.launch(LaunchRequest(command="pwd -P"))
        backend.wait(job, timeout_s=10)
        assert backend.logs(job)[0] == f"{tmp_path.resolve()}\n"

    def test_missing_workdir_is_refused_before_launch(self, backend: ComputeBackend, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match="not an existing directory"):
            backend.launch(LaunchRequest(command="true", workdir=str(tmp_path / "absent")))
        assert backend.list_jobs() == []

    def test_files_are_private(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="true", env={"TOKEN": "s3cret"}))
        backend.wait(job, timeout_s=10)
        jobdir = _local(backend).state_dir / "jobs" / job
        assert jobdir.stat().st_mode & 0o077 == 0
        assert (jobdir / "request.json").stat().st_mode & 0o077 == 0

    # -- detachment and loss ---------------------------------------------------------------------------------

    def test_job_survives_the_launching_process(self, backend: ComputeBackend) -> None:
        state_dir = _local(backend).state_dir
        launcher = _launcher(state_dir, 4, "sleep 0.5; echo survived")
        out, err = launcher.communicate("\n", timeout=30)
        assert launcher.returncode == 0, err
        job = out.split()[-1]
        # the launcher has exited (and its pipes closed, so nothing of the job held them open)
        assert backend.status(job).state in (JobState.PENDING, JobState.RUNNING)
        status = backend.wait(job, timeout_s=10)
        assert status.state is JobState.SUCCEEDED
        assert backend.logs(job)[0] == "survived\n"

    def test_killed_supervisor_means_lost_and_cancel_stops_the_leftovers(
        self, backend: ComputeBackend
    ) -> None:
        job = backend.launch(LaunchRequest(command="echo ready; sleep 30", resources=Resources(cpus=2)))
        _ready(backend, job)
        supervisor = json.loads((_local(backend).state_dir / "jobs" / job / "supervisor.json").read_text())
        os.kill(supervisor["pid"], signal.SIGKILL)
        wait_for(lambda: backend.status(job).state is JobState.LOST)
        lost = backend.status(job)
        assert "without recording an exit" in lost.message and lost.pid is not None
        assert not process_gone(lost.pid), "the job itself keeps running when its supervisor dies"
        assert _local(backend).in_use() == Resources(cpus=0)  # LOST is terminal: no longer reserved
        assert backend.cancel(job, grace_s=1).state is JobState.LOST
        assert process_gone(lost.pid)

    def test_terminated_supervisor_takes_the_job_down(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="echo ready; sleep 30"))
        _ready(backend, job)
        supervisor = json.loads((_local(backend).state_dir / "jobs" / job / "supervisor.json").read_text())
        pid = backend.status(job).pid
        assert pid is not None
        os.kill(supervisor["pid"], signal.SIGTERM)
        status = backend.wait(job, timeout_s=10)
        assert status.state is JobState.FAILED and "supervisor was terminated" in status.message
        assert process_gone(pid)

    def test_stragglers_are_stopped_when_the_main_process_ends(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="sleep 60 & echo $!"))
        status = backend.wait(job, timeout_s=10)
        assert status.state is JobState.SUCCEEDED
        assert process_gone(int(backend.logs(job)[0]))

    def test_never_recorded_supervisor_becomes_lost(
        self, backend: ComputeBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(
            LocalCompute, "_spawn_supervisor", lambda self, job_id, jobdir, secret_env=None: None
        )
        job = backend.launch(LaunchRequest(command="true"))
        assert backend.status(job).state is JobState.PENDING
        monkeypatch.setattr(local, "_LOST_AFTER_S", 0.0)
        assert backend.status(job).state is JobState.LOST
        assert "never started" in backend.status(job).message

    def test_supervisor_that_cannot_start_fails_the_job(
        self, backend: ComputeBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sys, "executable", "/nonexistent/python")
        with pytest.raises(ComputeError, match="could not start the supervisor"):
            backend.launch(LaunchRequest(command="true", resources=Resources(cpus=4)))
        [failed] = backend.list_jobs()
        assert failed.state is JobState.FAILED
        assert _local(backend).in_use() == Resources(cpus=0)

    # -- capacity across processes ---------------------------------------------------------------------------

    def test_concurrent_launches_never_overbook(self, make_backend: MakeBackend) -> None:
        backend = _local(make_backend(Resources(cpus=3)))
        launchers = [_launcher(backend.state_dir, 3, "sleep 10") for _ in range(6)]
        for launcher in launchers:
            assert launcher.stdin is not None
            launcher.stdin.write("\n")
            launcher.stdin.flush()
        outputs = []
        for launcher in launchers:
            out, err = launcher.communicate(timeout=30)
            assert launcher.returncode == 0, err
            outputs.append(out.strip())
        launched = [o for o in outputs if o.startswith("launched")]
        assert len(launched) == 3 and outputs.count("refused") == 3, outputs
        assert backend.in_use() == Resources(cpus=3)
        assert len([s for s in backend.list_jobs() if not s.state.terminal]) == 3

    # -- ids and files ---------------------------------------------------------------------------------------

    def test_ids_never_reach_outside_the_state_dir(self, backend: ComputeBackend) -> None:
        state_dir = _local(backend).state_dir
        backend.wait(backend.launch(LaunchRequest(command="true")), timeout_s=10)
        decoy = state_dir / "x"  # what jobs/../x would name
        decoy.mkdir()
        (decoy / "request.json").write_text(json.dumps({"name": "decoy", "created_at": 0}))
        (decoy / "exit.json").write_text(
            json.dumps({"state": "SUCCEEDED", "code": 0, "ended_at": 0, "message": ""})
        )
        (decoy / "stdout.log").write_text("secret")
        before = sorted(state_dir.parent.rglob("*"))
        for job_id in ("../x", "jobs/../../x", "..%2fx", "x/"):
            for call in (backend.status, backend.logs, backend.cancel):
                with pytest.raises(NotFound):
                    call(job_id)
        assert sorted(state_dir.parent.rglob("*")) == before

    def test_a_fresh_instance_sees_the_same_jobs(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="echo shared"))
        backend.wait(job, timeout_s=10)
        other = LocalCompute(_local(backend).state_dir, Resources(cpus=1))
        assert other.status(job).state is JobState.SUCCEEDED and other.logs(job)[0] == "shared\n"

    def test_forget_and_prune(self, backend: ComputeBackend) -> None:
        backend_local = _local(backend)
        done = backend.launch(LaunchRequest(command="true"))
        also_done = backend.launch(LaunchRequest(command="false"))
        running = backend.launch(LaunchRequest(command="sleep 30"))
        backend.wait(done, timeout_s=10)
        backend.wait(also_done, timeout_s=10)
        with pytest.raises(Conflict):
            backend_local.forget(running)
        backend_local.forget(done)
        with pytest.raises(NotFound):
            backend.status(done)
        assert backend_local.prune(older_than_s=3600) == []
        assert backend_local.prune(older_than_s=0) == [also_done]
        assert [s.job_id for s in backend.list_jobs()] == [running]
        assert not [p for p in (backend_local.state_dir / "jobs").iterdir() if p.name.startswith(".")]

    def test_logs_never_split_a_character(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="printf 'h\\303\\251llo'"))
        backend.wait(job, timeout_s=10)
        assert backend.logs(job, max_bytes=2) == ("h", 1)
        assert backend.logs(job, 1, max_bytes=2) == ("é", 3)
        assert backend.logs(job, 1, max_bytes=1) == ("\ufffd", 2)  # cannot fit a character: still progress
        assert backend.logs(job) == ("héllo", 6)


@pytest.mark.parametrize(
    ("data", "cut"),
    [
        (b"", 0),
        (b"abc", 3),
        (b"a\xc3", 1),
        (b"a\xc3\xa9", 3),
        (b"\xe2\x82", 0),
        (b"\xe2\x82\xac", 3),
        (b"x\xf0\x9f\x98", 1),
        (b"x\xf0\x9f\x98\x80", 5),
        (b"\x80\x80\x80\x80\x80", 5),
    ],
)
def test_utf8_boundary(data: bytes, cut: int) -> None:
    assert _utf8_boundary(data) == cut


def test_secret_env_reaches_the_job_but_no_file(tmp_path: Path) -> None:
    compute = LocalCompute.from_address(None, state_dir=tmp_path / "state", capacity=Resources(cpus=2))
    secret = "s3cr3t-" + "x" * 20
    req = LaunchRequest('echo "got=$API_TOKEN"', secret_env={"API_TOKEN": secret})
    assert secret not in repr(req)
    job = compute.launch(req)
    assert compute.wait(job, timeout_s=30).state == "SUCCEEDED"
    assert f"got={secret}" in compute.logs(job)[0]
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file() and path.name != "stdout.log":
            assert secret.encode() not in path.read_bytes(), path
