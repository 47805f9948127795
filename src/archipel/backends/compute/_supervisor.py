"""The detached supervisor of one local job: starts it, records it, waits, records how it ended.

:class:`~archipel.backends.compute.local.LocalCompute` runs ``python -I _supervisor.py JOBDIR`` in a new
session and waits only for that process, which forks the real supervisor and exits at once after recording
its identity. The supervisor is thus nobody's child (the launcher never has to reap it) and keeps running
when the launching CLI exits. This file uses only the standard library and imports no archipel module, so it
runs with ``-I`` however archipel was made importable in the launcher; ``local.py`` imports its names.

The files of a job, each JSON one written atomically (temp file, fsync, ``os.replace``)::

    request.json     by the launcher: job_id, argv, env (added to the inherited one), workdir, resources
    stdout.log       the job's stdout and stderr, merged, appended as they come
    supervisor.json  {pid, start}: the supervisor, written by the intermediate process before it exits
    started.json     {pid, pgid, start, started_at}: the job's process group leader, once it runs
    cancel           exists once someone asked to cancel the job
    exit.json        {state, code, ended_at, message}: written once, when no process of the job's group is left

``start`` is the process start time from ``/proc/<pid>/stat``, so a reused pid is never mistaken for ours.
The supervisor makes itself a child subreaper: orphaned processes of the job are re-parented to it and reaped,
so "the group is empty" is observable even where PID 1 never reaps zombies (containers, micro-VMs).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

REQUEST = "request.json"
LOG = "stdout.log"
SUPERVISOR = "supervisor.json"
STARTED = "started.json"
CANCEL = "cancel"
EXIT = "exit.json"

STRAGGLER_GRACE_S = 1.0
"""After the main process ends, what is left of its group gets SIGTERM, then SIGKILL this much later."""
GIVE_UP_S = 10.0
"""A group that still is not empty this long after SIGKILL (stuck in the kernel) is recorded anyway."""
_PR_SET_CHILD_SUBREAPER = 36


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or none of it (mode 0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if the file does not exist (yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def proc_stat(pid: int) -> tuple[str, int | None] | None:
    """``(state letter, start time in clock ticks)`` of process ``pid``, or None if there is none.

    Without ``/proc`` (not Linux) the state is ``"?"`` and the start time None: liveness only, no identity.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        if os.path.isdir("/proc/self"):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ("?", None)
    fields = raw[raw.rfind(b")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0].decode("ascii", "replace"), int(fields[19])


def is_alive(pid: int, start: int | None) -> bool:
    """True if ``pid`` runs (not a zombie) and is the process that had start time ``start``."""
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X", "x"):
        return False
    return start is None or stat[1] is None or stat[1] == start


def is_same_process(pid: int, start: int | None) -> bool:
    """True if ``pid`` still names the process started at ``start``, even as an unreaped zombie."""
    stat = proc_stat(pid)
    return stat is not None and (start is None or stat[1] is None or stat[1] == start)


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; an empty group is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drain_group(pgid: int) -> bool:
    """Reap, then stop, whatever is left of the job's group; True if the group is empty at the end."""
    terminated_at: float | None = None
    killed_at: float | None = None
    while True:
        _reap_children()
        if not _group_exists(pgid):
            return True
        now = time.monotonic()
        if terminated_at is None:
            signal_group(pgid, signal.SIGTERM)
            terminated_at = now
        elif killed_at is None and now - terminated_at >= STRAGGLER_GRACE_S:
            signal_group(pgid, signal.SIGKILL)
            killed_at = now
        elif killed_at is not None and now - killed_at >= GIVE_UP_S:
            return False
        time.sleep(0.005)


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class _Supervisor:
    def __init__(self, jobdir: Path) -> None:
        self.jobdir = jobdir
        self.pgid: int | None = None
        self.terminated = False

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Someone stopped the supervisor: pass it on to the job rather than leave the job unsupervised."""
        self.terminated = True
        if self.pgid is not None:
            signal_group(self.pgid, signal.SIGTERM)

    def record_exit(self, state: str, code: int | None, message: str) -> None:
        write_json_atomic(
            self.jobdir / EXIT, {"state": state, "code": code, "ended_at": time.time(), "message": message}
        )

    def run(self) -> None:
        request = read_json(self.jobdir / REQUEST)
        if request is None:
            raise FileNotFoundError(self.jobdir / REQUEST)
        if (self.jobdir / CANCEL).exists():
            self.record_exit("CANCELLED", None, "cancelled before it started")
            return
        env = {**os.environ, **request["env"], "ARCHIPEL_JOB_ID": request["job_id"]}
        argv: list[str] = request["argv"]
        with open(self.jobdir / LOG, "ab", buffering=0) as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=request["workdir"],
                    env=env,
                    process_group=0,
                )
            except OSError as exc:
                log.write(f"archipel: cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
                self.record_exit("FAILED", 127, f"could not start {argv[0]!r}: {exc.strerror or exc}")
                return
        stat = proc_stat(proc.pid)
        write_json_atomic(
            self.jobdir / STARTED,
            {
                "pid": proc.pid,
                "pgid": proc.pid,
                "start": stat[1] if stat else None,
                "started_at": time.time(),
            },
        )
        self.pgid = proc.pid
        if self.terminated or (self.jobdir / CANCEL).exists():  # asked while we were starting it
            signal_group(proc.pid, signal.SIGTERM)
        code = proc.wait()
        emptied = _drain_group(proc.pid)
        how = describe_exit(code)
        if not emptied:
            how += f"; some processes of group {proc.pid} could not be stopped"
        if (self.jobdir / CANCEL).exists():
            self.record_exit("CANCELLED", code, f"cancelled ({how})")
        elif self.terminated:
            self.record_exit("FAILED", code, f"the supervisor was terminated, so was the job ({how})")
        elif code == 0:
            self.record_exit("SUCCEEDED", code, how)
        else:
            self.record_exit("FAILED", code, how)


def main(argv: list[str]) -> int:
    """Fork the supervisor, record its identity, and return at once (see the module docstring)."""
    if len(argv) != 2:
        print("usage: _supervisor.py JOBDIR", file=sys.stderr)
        return 2
    jobdir = Path(argv[1])
    child = os.fork()
    if child:
        try:
            stat = proc_stat(child)
            write_json_atomic(jobdir / SUPERVISOR, {"pid": child, "start": stat[1] if stat else None})
        except BaseException:
            os.kill(child, signal.SIGKILL)
            raise
        return 0
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _become_subreaper()
    supervisor = _Supervisor(jobdir)
    signal.signal(signal.SIGTERM, supervisor.on_sigterm)
    try:
        supervisor.run()
    except BaseException as exc:  # record why, so the job is FAILED rather than LOST
        with contextlib.suppress(BaseException):
            supervisor.record_exit("FAILED", None, f"the supervisor failed: {type(exc).__name__}: {exc}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
