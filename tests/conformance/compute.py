"""The compute conformance suite: every compute backend's tests subclass :class:`ComputeConformance`.

A subclass overrides the ``backend_factory`` fixture (``capacity -> backend``); the suite builds backends
through ``make_backend``, which cancels whatever they still run when the test ends, so no process outlives a
test. Tests that look at processes (pids, process groups) run only when ``processes_are_local`` is True.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from archipel.backends.compute.base import ComputeBackend, JobState, LaunchRequest, Resources, WithCapacity
from archipel.errors import ComputeError, NoCapacity, NotFound, SpecError

BackendFactory = Callable[[Resources], ComputeBackend]
DEFAULT_CAPACITY = Resources(cpus=4, memory_bytes=8 * 2**30)
MALICIOUS_IDS = ["../x", "/etc", "..", ".", "a/../../b", "", "Job-1", "x" * 65, "job\x00", "-job", "job\n"]


def process_gone(pid: int) -> bool:
    """True if ``pid`` is not running (absent, or a zombie nobody reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return True
    return state in (b"Z", b"X")


def assert_no_process_in_group(pgid: int) -> None:
    """Fail if any non-zombie process is still in group ``pgid`` (Linux only)."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                alive.append(int(entry))
    assert alive == [], f"processes {alive} of group {pgid} are still running"


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


class ComputeConformance:
    """Shared behaviour of compute backends. Not collected itself (no ``Test`` prefix)."""

    processes_are_local = True

    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        raise NotImplementedError("override backend_factory in the backend's test class")

    @pytest.fixture
    def make_backend(self, backend_factory: BackendFactory) -> Iterator[Callable[..., ComputeBackend]]:
        made: list[ComputeBackend] = []

        def make(capacity: Resources = DEFAULT_CAPACITY) -> ComputeBackend:
            backend = backend_factory(capacity)
            made.append(backend)
            return backend

        yield make
        for backend in made:
            for status in backend.list_jobs():
                if not status.state.terminal or status.state is JobState.LOST:
                    backend.cancel(status.job_id, grace_s=0.5)

    @pytest.fixture
    def backend(self, make_backend: Callable[..., ComputeBackend]) -> ComputeBackend:
        return make_backend()

    # -- running ---------------------------------------------------------------------------------------------

    def test_echo_succeeds_and_is_logged(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="echo hello-archipel", name="Echo Test"))
        assert job.startswith("echo-test-")
        status = backend.wait(job, timeout_s=10)
        assert status.state is JobState.SUCCEEDED and status.state == "SUCCEEDED"
        assert status.exit_code == 0 and status.job_id == job and status.name == "Echo Test"
        assert status.started_at is not None and status.ended_at is not None
        assert status.started_at <= status.ended_at
        text, offset = backend.logs(job)
        assert text == "hello-archipel\n" and offset == len(text)
        assert backend.logs(job, offset) == ("", offset)

    def test_exit_code_propagates(self, backend: ComputeBackend) -> None:
        status = backend.wait(backend.launch(LaunchRequest(command="exit 3")), timeout_s=10)
        assert status.state is JobState.FAILED and status.exit_code == 3
        assert "3" in status.message

    def test_stderr_is_captured(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="echo out; echo err >&2"))
        backend.wait(job, timeout_s=10)
        assert backend.logs(job)[0].splitlines() == ["out", "err"]

    def test_env_workdir_and_job_id(self, backend: ComputeBackend, tmp_path: Path) -> None:
        workdir = tmp_path / "work dir"
        workdir.mkdir()
        req = LaunchRequest(
            command='echo "$GREETING|$ARCHIPEL_JOB_ID|$(pwd -P)"',
            env={"GREETING": "hello world"},
            workdir=str(workdir),
        )
        job = backend.launch(req)
        assert backend.wait(job, timeout_s=10).state is JobState.SUCCEEDED
        assert backend.logs(job)[0] == f"hello world|{job}|{workdir.resolve()}\n"

    def test_list_command_runs_without_a_shell(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command=["printf", "%s|", "a b", "$HOME", "*"]))
        assert backend.wait(job, timeout_s=10).state is JobState.SUCCEEDED
        assert backend.logs(job)[0] == "a b|$HOME|*|"

    def test_missing_program_fails(self, backend: ComputeBackend) -> None:
        status = backend.wait(backend.launch(LaunchRequest(command=["/nonexistent/program"])), timeout_s=10)
        assert status.state is JobState.FAILED

    def test_logs_tail_while_running(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="for i in 1 2 3 4; do echo line$i; sleep 0.15; done"))
        chunks: list[str] = []
        seen_while_running = False
        offset = 0
        while True:
            state = backend.status(job).state
            text, offset = backend.logs(job, offset)
            if text:
                chunks.append(text)
                seen_while_running |= not state.terminal
            if state.terminal:
                break
            time.sleep(0.02)
        text, offset = backend.logs(job, offset)
        chunks.append(text)
        assert "".join(chunks) == "line1\nline2\nline3\nline4\n"
        assert seen_while_running and len([c for c in chunks if c]) >= 2
        assert backend.logs(job, 6) == ("line2\nline3\nline4\n", offset)

    def test_logs_offset_past_the_end_and_bad_offsets(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="echo hi"))
        backend.wait(job, timeout_s=10)
        assert backend.logs(job, 1000) == ("", 1000)
        with pytest.raises(SpecError):
            backend.logs(job, -1)

    # -- cancel and wait -------------------------------------------------------------------------------------

    def test_cancel_stops_the_whole_process_group(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="sleep 60 & echo $!; wait"))
        wait_for(lambda: backend.logs(job)[0].strip() != "")
        grandchild = int(backend.logs(job)[0].strip())
        start = time.monotonic()
        status = backend.cancel(job, grace_s=5)
        assert time.monotonic() - start < 3
        assert status.state is JobState.CANCELLED and status.ended_at is not None
        if self.processes_are_local:
            assert process_gone(grandchild), "the job's background process survived cancel"
            assert status.pid is not None
            assert_no_process_in_group(status.pid)
        assert backend.status(job).state is JobState.CANCELLED

    def test_cancel_escalates_to_sigkill(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="trap '' TERM; echo ready; while :; do sleep 0.05; done"))
        wait_for(lambda: "ready" in backend.logs(job)[0])
        start = time.monotonic()
        status = backend.cancel(job, grace_s=0.3)
        assert status.state is JobState.CANCELLED
        assert 0.3 <= time.monotonic() - start < 4

    def test_cancel_an_ended_job_changes_nothing(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="exit 2"))
        ended = backend.wait(job, timeout_s=10)
        assert backend.cancel(job) == ended

    def test_cancel_a_job_that_just_launched(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="sleep 60"))
        assert backend.cancel(job, grace_s=2).state is JobState.CANCELLED

    def test_wait_timeout_raises_and_the_job_keeps_running(self, backend: ComputeBackend) -> None:
        job = backend.launch(LaunchRequest(command="sleep 30"))
        start = time.monotonic()
        with pytest.raises(ComputeError, match="still"):
            backend.wait(job, timeout_s=0.2)
        assert 0.2 <= time.monotonic() - start < 2
        assert not backend.status(job).state.terminal

    # -- ids ---------------------------------------------------------------------------------------------------

    def test_unknown_job_is_not_found(self, backend: ComputeBackend) -> None:
        backend.wait(backend.launch(LaunchRequest(command="true")), timeout_s=10)  # the backend has state now
        for call in (backend.status, backend.logs, backend.cancel, backend.wait):
            with pytest.raises(NotFound):
                call("no-such-job-1234")

    @pytest.mark.parametrize("job_id", MALICIOUS_IDS)
    def test_malformed_job_ids_are_refused(self, backend: ComputeBackend, job_id: str) -> None:
        for call in (backend.status, backend.logs, backend.cancel, backend.wait):
            with pytest.raises((NotFound, SpecError)):
                call(job_id)

    def test_list_jobs(self, backend: ComputeBackend) -> None:
        first = backend.launch(LaunchRequest(command="true", name="first"))
        second = backend.launch(LaunchRequest(command="sleep 30", name="second"))
        backend.wait(first, timeout_s=10)
        listed = {s.job_id: s for s in backend.list_jobs()}
        assert set(listed) == {first, second}
        assert listed[first].state is JobState.SUCCEEDED
        assert listed[second].state in (JobState.PENDING, JobState.RUNNING)
        assert [s.job_id for s in backend.list_jobs()] == [first, second]  # oldest first

    # -- capacity ----------------------------------------------------------------------------------------------

    def _capacity_backend(self, make_backend: Callable[..., ComputeBackend]) -> WithCapacity:
        backend = make_backend(Resources(cpus=3, memory_bytes=2**30, accelerators={"A100": 1}))
        if not isinstance(backend, WithCapacity):
            pytest.skip(f"{type(backend).__name__} does not enforce a capacity")
        return backend

    def test_capacity_refuses_then_fits_after_a_job_ends(
        self, make_backend: Callable[..., ComputeBackend]
    ) -> None:
        backend = self._capacity_backend(make_backend)
        assert "capacity" in type(backend).features()
        two = Resources(cpus=2)
        first = backend.launch(LaunchRequest(command="sleep 1", resources=two))
        assert backend.in_use() == two
        with pytest.raises(NoCapacity, match=r"2 cpus.*1 cpus"):
            backend.launch(LaunchRequest(command="true", resources=two))
        assert backend.wait(first, timeout_s=10).state is JobState.SUCCEEDED
        assert backend.in_use() == Resources(cpus=0)
        second = backend.launch(LaunchRequest(command="true", resources=two))
        assert backend.wait(second, timeout_s=10).state is JobState.SUCCEEDED

    def test_cancel_frees_capacity(self, make_backend: Callable[..., ComputeBackend]) -> None:
        backend = self._capacity_backend(make_backend)
        full = Resources(cpus=3, memory_bytes=2**30, accelerators={"A100": 1})
        first = backend.launch(LaunchRequest(command="sleep 30", resources=full))
        with pytest.raises(NoCapacity, match="A100"):
            backend.launch(
                LaunchRequest(command="true", resources=Resources(cpus=0, accelerators={"A100": 1}))
            )
        probe = backend.launch(LaunchRequest(command="echo probe", resources=Resources(cpus=0)))
        assert backend.wait(probe, timeout_s=10).state is JobState.SUCCEEDED  # cpus=0 always fits
        backend.cancel(first, grace_s=1)
        assert backend.in_use() == Resources(cpus=0)
        backend.wait(backend.launch(LaunchRequest(command="true", resources=full)), timeout_s=10)

    @pytest.mark.parametrize(
        "resources",
        [
            Resources(cpus=4),
            Resources(cpus=1, memory_bytes=2**31),
            Resources(cpus=1, accelerators={"H100": 1}),
        ],
    )
    def test_never_fits(self, make_backend: Callable[..., ComputeBackend], resources: Resources) -> None:
        backend = self._capacity_backend(make_backend)
        with pytest.raises(NoCapacity, match="never fits"):
            backend.launch(LaunchRequest(command="true", resources=resources))
        assert backend.list_jobs() == []
        assert backend.capacity() == Resources(cpus=3, memory_bytes=2**30, accelerators={"A100": 1})
