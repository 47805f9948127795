"""The local compute backend, and the reference for the conformance suite: jobs are process groups here.

Layout under ``state_dir``::

    lock              flock()ed while checking capacity and reserving a job, so launches from any number of
                      processes never overbook
    jobs/<job_id>/    one folder per job; its files and who writes them are described in ``_supervisor``

Each job is watched by a detached supervisor (``_supervisor.py``) in its own session, so a job outlives the
CLI that launched it. Status is derived from the job's files alone, so any process can ask, at any time:

=====================================================  ===========
``exit.json`` exists                                   its state (SUCCEEDED, FAILED or CANCELLED)
supervisor alive, ``started.json`` exists              RUNNING
supervisor alive, not started yet                      PENDING
supervisor gone without ``exit.json``                  LOST
no supervisor recorded yet                             PENDING, LOST after ``SPAWN_TIMEOUT_S`` + 10 s
=====================================================  ===========

A job's reservation (its ``Resources``) counts against the capacity until it is terminal. LOST jobs no longer
count; ``cancel`` on a LOST job still stops its leftover processes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

from archipel.backends.compute import _supervisor as sv
from archipel.backends.compute.base import (
    JOB_ID,
    JobState,
    JobStatus,
    LaunchRequest,
    Resources,
    WithCapacity,
    WithForget,
    WithLogTail,
    check_job_id,
    locked_state,
    new_job_id,
)
from archipel.errors import ComputeError, Conflict, NoCapacity, NotFound, SpecError

__all__ = ["SPAWN_TIMEOUT_S", "LocalCompute"]

SPAWN_TIMEOUT_S = 20.0
"""How long ``launch`` waits for the supervisor to be forked and recorded."""
_LOST_AFTER_S = SPAWN_TIMEOUT_S + 10.0
_POLL_S = 0.01
_STOP_TIMEOUT_S = sv.STRAGGLER_GRACE_S + sv.GIVE_UP_S + 2.0


def _utf8_boundary(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that does not end inside a UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: look further back for the lead byte
            continue
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if needed > back else len(data)
        return len(data)
    return len(data)


class LocalCompute(WithCapacity, WithLogTail, WithForget):
    """Jobs as process groups on this machine, supervised from ``state_dir``, limited to ``capacity``.

    Several processes (CLI invocations, a server) may use the same ``state_dir`` at once.
    """

    scheme = "local"

    def __init__(self, state_dir: Path, capacity: Resources) -> None:
        if not isinstance(capacity, Resources):
            raise SpecError(f"capacity must be a Resources, not {type(capacity).__name__}")
        self.state_dir = Path(state_dir)
        self._limits = capacity
        self._jobs = self.state_dir / "jobs"

    @classmethod
    def from_address(cls, address: str | None, *, state_dir: Path, capacity: Resources) -> Self:
        if address is not None:
            raise SpecError(
                f"the local compute backend takes no address (got {address!r}); write `compute: local`"
            )
        return cls(state_dir, capacity)

    def __repr__(self) -> str:
        return f"<LocalCompute {self.state_dir} {self._limits.describe()}>"

    # -- hooks -----------------------------------------------------------------------------------------------

    def _capacity(self) -> Resources:
        return self._limits

    def _in_use(self) -> Resources:
        used = Resources(cpus=0)
        if not self._jobs.is_dir():
            return used
        for entry in os.scandir(self._jobs):
            if not JOB_ID.fullmatch(entry.name) or os.path.exists(os.path.join(entry.path, sv.EXIT)):
                continue  # an ended job, cheaply
            jobdir = Path(entry.path)
            request = self._read_request(jobdir)
            if request is not None and not self._derive(entry.name, jobdir, request).state.terminal:
                used = used + Resources.from_json(request["resources"])
        return used

    def _launch(self, req: LaunchRequest) -> str:
        workdir = self._resolve_workdir(req.workdir)
        self._jobs.mkdir(parents=True, exist_ok=True)
        with locked_state(self.state_dir):
            used = self._in_use()
            free = self._limits.minus(used)
            short = req.resources.shortfall(free)
            if short:
                raise NoCapacity(
                    f"job {req.name!r} does not fit now: it asks for {req.resources.describe()}, "
                    f"{free.describe()} of {self._limits.describe()} is free ({'; '.join(short)}); "
                    "wait for running jobs to end or cancel some"
                )
            job_id, jobdir = self._create_job(req, workdir)
        self._spawn_supervisor(job_id, jobdir, dict(req.secret_env))
        return job_id

    def _status(self, job_id: str) -> JobStatus:
        jobdir = self._job_dir(job_id)
        request = self._read_request(jobdir)
        if request is None:
            raise NotFound(f"no job {job_id!r} in {self._jobs}")
        return self._derive(job_id, jobdir, request)

    def _logs(self, job_id: str, offset: int, max_bytes: int) -> tuple[str, int]:
        jobdir = self._job_dir(job_id)
        try:
            with open(jobdir / sv.LOG, "rb") as f:
                f.seek(offset)
                data = f.read(max_bytes)
        except FileNotFoundError:
            raise NotFound(f"no job {job_id!r} in {self._jobs}") from None
        except OSError as exc:
            raise ComputeError(f"cannot read the log of job {job_id}: {exc}") from None
        cut = _utf8_boundary(data)
        if cut == 0 and len(data) == max_bytes:  # max_bytes < one character: make progress regardless
            cut = len(data)
        return data[:cut].decode("utf-8", "replace"), offset + cut

    def _cancel(self, job_id: str, grace_s: float) -> JobStatus:
        jobdir = self._job_dir(job_id)
        current = self._status(job_id)
        if current.state is JobState.LOST:
            return self._stop_lost(job_id, jobdir, grace_s)
        sv.write_json_atomic(jobdir / sv.CANCEL, {"requested_at": time.time()})
        deadline = time.monotonic() + grace_s
        terminated = False
        while True:
            current = self._status(job_id)
            if current.state.terminal:
                return current
            started = self._read(jobdir / sv.STARTED)
            if started is not None and not terminated:
                sv.signal_group(started["pgid"], signal.SIGTERM)
                terminated = True
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_S)
        # The grace period is over: kill the group; the supervisor records the exit once the group is empty.
        give_up = time.monotonic() + _STOP_TIMEOUT_S
        killed = False
        while time.monotonic() < give_up:
            started = self._read(jobdir / sv.STARTED)
            if started is not None and not killed:
                sv.signal_group(started["pgid"], signal.SIGKILL)
                killed = True
            current = self._status(job_id)
            if current.state.terminal:
                return current
            time.sleep(_POLL_S)
        raise ComputeError(f"job {job_id} did not stop after SIGKILL: {current.message}")

    def _list_jobs(self) -> list[JobStatus]:
        if not self._jobs.is_dir():
            return []
        found: list[tuple[float, JobStatus]] = []
        for entry in os.scandir(self._jobs):
            if not JOB_ID.fullmatch(entry.name):
                continue
            jobdir = Path(entry.path)
            request = self._read_request(jobdir)
            if request is not None:  # None: forgotten while we listed
                found.append((request["created_at"], self._derive(entry.name, jobdir, request)))
        found.sort(key=lambda pair: (pair[0], pair[1].job_id))
        return [status for _, status in found]

    # -- local extras ----------------------------------------------------------------------------------------

    def forget(self, job_id: str) -> None:
        """Delete an ended job's folder (log included). Raises NotFound, or Conflict if it has not ended."""
        current = self.status(job_id)
        if not current.state.terminal:
            raise Conflict(f"job {job_id} is {current.state}; cancel it before forgetting it")
        trash = self._jobs / f".trash-{job_id}-{secrets.token_hex(4)}"
        try:
            os.rename(self._job_dir(job_id), trash)  # readers see the whole folder or nothing
        except FileNotFoundError:
            return  # forgotten concurrently
        shutil.rmtree(trash, ignore_errors=True)

    def prune(self, older_than_s: float) -> list[str]:
        """Forget every job that ended more than ``older_than_s`` ago (LOST ones: created); returns their ids."""
        cutoff = time.time() - older_than_s
        pruned = []
        for status in self.list_jobs():
            if not status.state.terminal:
                continue
            when = status.ended_at
            if when is None:
                request = self._read_request(self._job_dir(status.job_id)) or {}
                when = request.get("created_at", 0.0)
            if when < cutoff:
                with contextlib.suppress(NotFound):
                    self.forget(status.job_id)
                    pruned.append(status.job_id)
        return pruned

    # -- internals -------------------------------------------------------------------------------------------

    def _job_dir(self, job_id: str) -> Path:
        jobdir = self._jobs / check_job_id(job_id)
        if not jobdir.is_dir():
            raise NotFound(f"no job {job_id!r} in {self._jobs}")
        return jobdir

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return sv.read_json(path)
        except (OSError, ValueError) as exc:
            raise ComputeError(f"cannot read {path}: {exc}") from None

    def _read_request(self, jobdir: Path) -> dict[str, Any] | None:
        return self._read(jobdir / sv.REQUEST)

    def _resolve_workdir(self, workdir: str | None) -> str:
        path = Path(workdir).expanduser() if workdir is not None else Path.cwd()
        path = path.resolve()
        if not path.is_dir():
            raise SpecError(f"workdir {workdir!r} is not an existing directory ({path})")
        return str(path)

    def _create_job(self, req: LaunchRequest, workdir: str) -> tuple[str, Path]:
        """Write the job's folder under a temporary name, then rename it: it appears complete or not at all."""
        job_id = new_job_id(req.name)
        while (self._jobs / job_id).exists():  # 32 random bits; we hold the lock, so this check is safe
            job_id = new_job_id(req.name)
        tmp = self._jobs / f".new-{job_id}"
        tmp.mkdir(mode=0o700)
        try:
            sv.write_json_atomic(
                tmp / sv.REQUEST,
                {
                    "job_id": job_id,
                    "name": req.name,
                    "command": req.command if isinstance(req.command, str) else list(req.command),
                    "argv": req.argv,
                    "env": dict(req.env),
                    "workdir": workdir,
                    "resources": req.resources.to_json(),
                    "labels": dict(req.labels),
                    "created_at": time.time(),
                },
            )
            os.close(os.open(tmp / sv.LOG, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.rename(tmp, self._jobs / job_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return job_id, self._jobs / job_id

    def _spawn_supervisor(self, job_id: str, jobdir: Path, secret_env: dict[str, str] | None = None) -> None:
        """Start the detached supervisor; on failure record the job FAILED (freeing its capacity) and raise."""
        problem = ""
        try:
            with open(jobdir / sv.LOG, "ab") as log:
                done = subprocess.run(
                    [sys.executable, "-I", sv.__file__, str(jobdir)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    cwd="/",
                    env={**os.environ, **(secret_env or {})},  # secrets by inheritance: never in a file
                    start_new_session=True,
                    timeout=SPAWN_TIMEOUT_S,
                    check=False,
                )
            if done.returncode != 0:
                problem = f"it exited with code {done.returncode}"
        except subprocess.TimeoutExpired:
            problem = f"it did not start within {SPAWN_TIMEOUT_S:g} s"
        except OSError as exc:
            problem = str(exc)
        if not problem and self._read(jobdir / sv.SUPERVISOR) is None:
            problem = "it did not record its pid"
        if problem:
            message = f"could not start the supervisor of job {job_id}: {problem} (see {jobdir / sv.LOG})"
            if self._read(jobdir / sv.EXIT) is None:
                sv.write_json_atomic(
                    jobdir / sv.EXIT,
                    {"state": "FAILED", "code": None, "ended_at": time.time(), "message": message},
                )
            raise ComputeError(message)

    def _derive(self, job_id: str, jobdir: Path, request: dict[str, Any]) -> JobStatus:
        """The job's status from its files (see the table in the module docstring)."""
        name = request.get("name", "")
        ended = self._read(jobdir / sv.EXIT)
        started = self._read(jobdir / sv.STARTED)
        if ended is None:
            supervisor = self._read(jobdir / sv.SUPERVISOR)
            if supervisor is None:
                if time.time() - request["created_at"] < _LOST_AFTER_S:
                    return JobStatus(job_id, JobState.PENDING, message="starting its supervisor", name=name)
                return JobStatus(job_id, JobState.LOST, message="its supervisor never started", name=name)
            if sv.is_alive(supervisor["pid"], supervisor["start"]):
                if started is None:
                    return JobStatus(job_id, JobState.PENDING, message="starting", name=name)
                return JobStatus(
                    job_id,
                    JobState.RUNNING,
                    started_at=started["started_at"],
                    message=f"running as process group {started['pgid']}",
                    pid=started["pid"],
                    name=name,
                )
            # The supervisor may have recorded the exit just before it ended: look again.
            ended = self._read(jobdir / sv.EXIT)
            started = self._read(jobdir / sv.STARTED)
            if ended is None:
                leftover = f"; process group {started['pgid']} may still be running" if started else ""
                return JobStatus(
                    job_id,
                    JobState.LOST,
                    started_at=started["started_at"] if started else None,
                    message=f"its supervisor (pid {supervisor['pid']}) ended without recording an exit{leftover}",
                    pid=started["pid"] if started else None,
                    name=name,
                )
        state = JobState(ended["state"])
        if not state.terminal:
            raise ComputeError(f"{jobdir / sv.EXIT} records a non-terminal state {state}")
        return JobStatus(
            job_id,
            state,
            exit_code=ended["code"],
            started_at=started["started_at"] if started else None,
            ended_at=ended["ended_at"],
            message=ended["message"],
            pid=started["pid"] if started else None,
            name=name,
        )

    def _stop_lost(self, job_id: str, jobdir: Path, grace_s: float) -> JobStatus:
        """Stop what a vanished supervisor left running, if its group leader is still the process we started."""
        started = self._read(jobdir / sv.STARTED)
        if started is not None and sv.is_same_process(started["pid"], started["start"]):
            sv.signal_group(started["pgid"], signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while sv.is_alive(started["pid"], started["start"]) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            if sv.is_same_process(
                started["pid"], started["start"]
            ):  # alive or a zombie: the pgid is still ours
                sv.signal_group(started["pgid"], signal.SIGKILL)
        return self._status(job_id)
