"""The Ray compute backend: jobs run on a Ray cluster through the Ray Jobs REST API (``ray+http://HOST:8265``).

archipel talks to the cluster's dashboard over plain HTTP with JSON (``urllib``): it never opens a Ray Client
session and never imports ``ray``, so this backend needs nothing beyond the standard library. Endpoints used:
``POST /api/jobs/`` (submit), ``GET /api/jobs/`` (list), ``GET /api/jobs/ID`` (status), ``GET /api/jobs/ID/logs``,
``POST /api/jobs/ID/stop`` and ``DELETE /api/jobs/ID`` (forget).

How archipel's contract maps onto Ray's (see :mod:`archipel.backends.compute.base`):

- **Job ids.** archipel makes the id (:func:`~archipel.backends.compute.base.new_job_id`) and submits it as
  Ray's ``submission_id``, so Ray's ``raysubmit_…`` ids never appear.
- **Scope.** Every job carries the metadata ``archipel.scope``, a random token kept in ``state_dir/scope`` and
  made by the first launch. A backend knows only the jobs of its scope: ``status``/``logs``/``cancel`` of any
  other job on the cluster (another workspace's, someone's ``ray job submit``, a Ray driver) is NotFound, and
  ``list_jobs`` lists only its own.
- **Command.** Ray runs the entrypoint with ``/bin/sh -c``. archipel's entrypoint is
  ``printf MARK && [cd -- WORKDIR &&] exec ARGV`` with ARGV shell-quoted, so a string command runs as
  ``/bin/sh -c COMMAND`` and a list runs without a shell, as on
  :class:`~archipel.backends.compute.local.LocalCompute`. MARK is the line ``\x1earchipel`` (see logs).
- **Workdir.** An absolute directory *on the Ray node* (``cd`` in the entrypoint; a missing one fails the job,
  exit code 2, with the shell's message in its log). Not runtime_env ``working_dir``: Ray would upload a copy, so the
  job would neither start in the directory it names nor write into it. None: Ray's default directory.
- **Environment.** ``env`` goes to runtime_env ``env_vars``, with ``ARCHIPEL_JOB_ID`` and
  ``RAY_JOB_STOP_WAIT_TIME_S`` (see cancel). Ray applies them to the whole Ray job: its tasks and actors too.
- **Resources.** ``cpus`` → ``entrypoint_num_cpus``, ``memory_bytes`` → ``entrypoint_memory``; accelerators count
  as GPUs (``entrypoint_num_gpus``) and a name other than ``GPU`` also asks for Ray's ``accelerator_type:NAME``
  resource, the way ``@ray.remote(accelerator_type=...)`` does. A job asks for one accelerator type at most.
- **States.** PENDING, RUNNING, SUCCEEDED and FAILED as they are; STOPPED → CANCELLED; FAILED because the job's
  supervisor actor died → LOST (the outcome is unknown). ``exit_code`` is Ray's ``driver_exit_code`` (negative
  for a signal); ``started_at`` is Ray's ``start_time`` (the submission) once the job left PENDING.
- **Logs.** Ray keeps one log per job: runtime-env setup lines, Ray's header ``Running entrypoint for job ID: …``
  and the job's stdout and stderr, merged. Ray 2.60 writes its header through a buffer it flushes only after
  starting the job, so the header may land after the job's first output. ``logs`` therefore returns what follows
  the job's own first line, MARK, less Ray's header if it came later; offsets count bytes of its UTF-8
  encoding. Ray's API has no ranged read, so every call fetches the whole log.
- **Cancel.** Ray sends SIGTERM to the entrypoint and its descendants, then SIGKILL after
  ``RAY_JOB_STOP_WAIT_TIME_S``, which the job's supervisor reads from the job's environment. The grace is thus
  fixed per job at launch (``stop_grace_s``, whole seconds) and the ``grace_s`` given to ``cancel`` cannot change
  it. Ray 2.60 waits that whole grace even when the job ends at SIGTERM, so a cancel takes about ``stop_grace_s``.
  Ray ignores a stop while a job waits to be scheduled (ray-project/ray#58353; it stops the job once it starts):
  such a job is recorded cancelled in ``state_dir/cancelled/`` and reported CANCELLED from then on.
- **Capacity.** :class:`WithCapacity` against the site's declared capacity, counted from this scope's jobs that
  are not terminal. Launches sharing a ``state_dir`` hold a file lock while they check and submit, so they never
  overbook. Ray schedules as well: a job within archipel's capacity but beyond the cluster's free resources
  waits PENDING (Ray fails it after ``RAY_JOB_START_TIMEOUT_SECONDS``, 15 minutes by default).
- **Forget.** ``DELETE /api/jobs/ID``: Ray drops the job's record and log.
- **Errors.** No answer (refused, reset, timeout, unknown host) → :class:`SiteUnavailable`; HTTP 404 → NotFound;
  any other unexpected reply → :class:`ComputeError` carrying the last line of Ray's text.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import secrets
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from archipel.backends.compute._supervisor import describe_exit
from archipel.backends.compute.base import (
    JOB_ID,
    JobState,
    JobStatus,
    LaunchRequest,
    Resources,
    WithCapacity,
    WithForget,
    WithLogTail,
    locked_state,
    new_job_id,
)
from archipel.errors import ComputeError, Conflict, NoCapacity, NotFound, SiteUnavailable, SpecError

__all__ = ["RayJobsCompute"]

_SCOPE_KEY = "archipel.scope"
_NAME_KEY = "archipel.name"
_CREATED_KEY = "archipel.created_at"
_RESOURCES_KEY = "archipel.resources"
_LABELS_KEY = "archipel.labels"
_GPU = "GPU"
_ACCELERATOR_TYPE_SHARE = 0.001  # what Ray itself asks of accelerator_type:NAME: any share pins the node type
_STOP_SLACK_S = 10.0
"""How long past its stop grace a stopped job may take to be reported ended before cancel gives up."""
_POLL_S = 0.05
_PENDING_STOP_S = 3.0
"""How long cancel waits for a PENDING job to start (and Ray to stop it) before recording it cancelled."""
_CANCELLED_DIR = "cancelled"
_CANCELLED_PENDING = (
    "cancelled while waiting to be scheduled; Ray stops a job only once it has started, so it will stop this "
    "one as soon as it starts (or fail it when its start times out)"
)
_RESTOP_EVERY_S = 0.5
_ERROR_TEXT_CHARS = 500
_MARK = "\x1earchipel\n"
"""The first line every job prints (see logs in the module docstring): the record separator, ``archipel``."""
_PRINT_MARK = r"printf '\036archipel\n'"


def _job_output(log: str, ray_header: str) -> bytes:
    """The job's own output in Ray's ``log`` of it: what follows MARK, less ``ray_header`` if that came later.

    Nothing before MARK is the job's: the entrypoint prints MARK before anything else. The header (the entrypoint
    and with it MARK's source, ``\\036`` not the byte 0x1e, so it cannot be taken for MARK) is one ``write``
    to a file Ray opened for appending, so when it lands after MARK it lands whole, between two of the job's.
    """
    mark = log.find(_MARK)
    if mark < 0:
        return b""  # not started yet
    start = mark + len(_MARK)
    header = log.find(ray_header)
    if header >= start:
        log = log[:header] + log[header + len(ray_header) :]
    return log[start:].encode("utf-8", "replace")


def _utf8_cut(data: bytes, start: int, max_bytes: int) -> int:
    """End of the longest slice of valid UTF-8 ``data`` from ``start`` (at most ``max_bytes``) that does not end
    inside a character; at least one byte past ``start`` when any is left, so callers always progress."""
    end = min(len(data), start + max_bytes)
    while start < end < len(data) and data[end] & 0xC0 == 0x80:  # data[end] continues a character
        end -= 1
    return end if end > start else min(len(data), start + max_bytes)


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes

    def json(self, what: str) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ComputeError(f"the Ray Jobs API answered {what} with something that is not JSON") from None

    def text(self) -> str:
        """The last non-empty line of the body (Ray answers errors with a traceback), shortened."""
        lines = [line.strip() for line in self.body.decode("utf-8", "replace").splitlines() if line.strip()]
        return (lines[-1] if lines else "(no text)")[:_ERROR_TEXT_CHARS]


class RayJobsCompute(WithCapacity, WithLogTail, WithForget):
    """Jobs on the Ray cluster whose Jobs API is at ``address`` (``http://HOST:8265``).

    ``state_dir`` holds this backend's scope token, its launch lock and the cancels Ray could not act on yet;
    the first launch creates it. ``capacity`` is what archipel may run on the cluster at once. ``stop_grace_s``
    is the SIGTERM-to-SIGKILL time of every job launched (whole seconds). ``timeout_s`` bounds each HTTP
    request. Several processes may use the same ``state_dir`` at once.
    """

    scheme = "ray"

    def __init__(
        self,
        address: str,
        state_dir: Path,
        capacity: Resources,
        *,
        stop_grace_s: int = 5,
        timeout_s: float = 10.0,
    ) -> None:
        parts = urlsplit(address) if isinstance(address, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise SpecError(
                f"the Ray Jobs API address must be http://HOST:PORT or https://HOST:PORT, not {address!r}"
            )
        if not isinstance(capacity, Resources):
            raise SpecError(f"capacity must be a Resources, not {type(capacity).__name__}")
        if isinstance(stop_grace_s, bool) or not isinstance(stop_grace_s, int) or stop_grace_s < 0:
            raise SpecError(f"stop_grace_s must be a whole number of seconds >= 0, not {stop_grace_s!r}")
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise SpecError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
        self.address = address.rstrip("/")
        self.state_dir = Path(state_dir)
        self.stop_grace_s = stop_grace_s
        self.timeout_s = float(timeout_s)
        self._limits = capacity

    @classmethod
    def from_address(cls, address: str | None, *, state_dir: Path, capacity: Resources) -> Self:
        if address is None:
            raise SpecError("the Ray compute backend needs the Jobs API address: ray+http://HOST:8265")
        return cls(address, state_dir, capacity)

    def __repr__(self) -> str:
        return f"<RayJobsCompute {self.address} {self._limits.describe()}>"

    # -- hooks -----------------------------------------------------------------------------------------------

    def _check_request(self, req: LaunchRequest) -> None:
        if req.workdir is not None and not req.workdir.startswith("/"):
            raise SpecError(
                f"workdir {req.workdir!r} must be an absolute path on the Ray cluster's nodes; "
                "a relative one would depend on where Ray happens to start the job"
            )
        kinds = [name for name in req.resources.accelerators if name != _GPU]
        if len(kinds) > 1:
            raise SpecError(
                f"job {req.name!r} asks for {', '.join(kinds)}: a Ray job's entrypoint runs on one node, "
                "with one accelerator type"
            )
        super()._check_request(req)  # capacity: after what no capacity could fix

    def _capacity(self) -> Resources:
        return self._limits

    def _in_use(self) -> Resources:
        scope = self._scope()
        return Resources(cpus=0) if scope is None else self._used(self._list_cluster(), scope)

    def _launch(self, req: LaunchRequest) -> str:
        with locked_state(self.state_dir):
            scope = self._make_scope()
            cluster = self._list_cluster()
            free = self._limits.minus(self._used(cluster, scope))
            short = req.resources.shortfall(free)
            if short:
                raise NoCapacity(
                    f"job {req.name!r} does not fit now: it asks for {req.resources.describe()}, "
                    f"{free.describe()} of {self._limits.describe()} is free ({'; '.join(short)}); "
                    "wait for running jobs to end or cancel some"
                )
            taken = {details.get("submission_id") for details in cluster}
            job_id = new_job_id(req.name)
            while job_id in taken:  # 32 random bits; the cluster's ids are all known here
                job_id = new_job_id(req.name)
            reply = self._send("POST", "/api/jobs/", self._submission(req, job_id, scope))
            answer = self._expect(reply, f"submit job {job_id}")
            if not isinstance(answer, dict) or answer.get("submission_id") != job_id:
                raise ComputeError(f"the Ray Jobs API accepted job {job_id} but answered {answer!r}")
        return job_id

    def _status(self, job_id: str) -> JobStatus:
        return self._to_status(self._details(job_id), self._cancel_records(job_id).get(job_id))

    def _logs(self, job_id: str, offset: int, max_bytes: int) -> tuple[str, int]:
        details = self._details(job_id)
        answer = self._expect(self._send("GET", f"/api/jobs/{job_id}/logs"), f"send the log of job {job_id}")
        text = answer.get("logs") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise ComputeError(f"the Ray Jobs API sent the log of job {job_id} as {type(text).__name__}")
        data = _job_output(text, f"Running entrypoint for job {job_id}: {details.get('entrypoint', '')}\n")
        if offset >= len(data):
            return "", offset
        end = _utf8_cut(data, offset, max_bytes)
        return data[offset:end].decode("utf-8", "replace"), end

    def _cancel(self, job_id: str, grace_s: float) -> JobStatus:
        """Ask Ray to stop the job, then wait until Ray reports it ended (``grace_s`` is fixed at launch).

        A job still PENDING after :data:`_PENDING_STOP_S` is waiting to be scheduled, and Ray acts on a stop
        only once it starts (ray-project/ray#58353): when Ray has taken the stop (its supervisor exists), the
        job is recorded cancelled here, and Ray stops it as soon as it starts.
        """
        start = time.monotonic()
        deadline = start + self.stop_grace_s + _STOP_SLACK_S
        asked_at = -math.inf
        taken = False
        while True:
            current = self._status(job_id)
            if current.state.terminal:
                return current
            if taken and current.state is JobState.PENDING and time.monotonic() - start >= _PENDING_STOP_S:
                self._record_cancel(job_id)
                return self._status(job_id)
            if time.monotonic() >= deadline:
                raise ComputeError(
                    f"job {job_id} is still {current.state} {self.stop_grace_s + _STOP_SLACK_S:g} s after "
                    f"it was asked to stop: {current.message}"
                )
            if time.monotonic() - asked_at >= _RESTOP_EVERY_S:
                # Ray drops a stop that comes before the job's supervisor exists ("stopped": false): ask again.
                answer = self._expect(self._send("POST", f"/api/jobs/{job_id}/stop"), f"stop job {job_id}")
                taken |= isinstance(answer, dict) and answer.get("stopped") is True
                asked_at = time.monotonic()
            time.sleep(_POLL_S)

    def _list_jobs(self) -> list[JobStatus]:
        scope = self._scope()
        if scope is None:
            return []
        own = [details for details in self._list_cluster() if self._owned(details, scope)]
        own.sort(key=lambda d: (self._created_at(d), d["submission_id"]))
        cancelled = self._cancel_records()
        return [self._to_status(details, cancelled.get(details["submission_id"])) for details in own]

    # -- Ray extras ------------------------------------------------------------------------------------------

    def forget(self, job_id: str) -> None:
        """Delete an ended job's record and log on the cluster. Raises NotFound, or Conflict if it has not ended."""
        details = self._details(job_id)
        record = self._cancel_records(job_id).get(job_id)
        current = self._to_status(details, record)
        if not current.state.terminal:
            raise Conflict(f"job {job_id} is {current.state}; cancel it before forgetting it")
        if record is not None and details.get("status") in ("PENDING", "RUNNING"):
            raise Conflict(
                f"job {job_id} is cancelled but Ray still holds it {details['status']} until it can stop it; "
                "forget it once Ray has"
            )
        reply = self._send("DELETE", f"/api/jobs/{job_id}")
        if reply.status != 404:  # 404: forgotten concurrently
            self._expect(reply, f"delete job {job_id}")
        if record is not None:
            (self.state_dir / _CANCELLED_DIR / job_id).unlink(missing_ok=True)

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> _Reply:
        """One request to the Jobs API. Raises SiteUnavailable when the cluster does not answer."""
        request = urllib.request.Request(
            self.address + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return _Reply(response.status, response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return _Reply(exc.code, exc.read())
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # refused, reset, timed out, unknown host, or a reply cut short
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                reason = f"no answer within {self.timeout_s:g} s"
            raise SiteUnavailable(
                f"the Ray Jobs API at {self.address} does not answer ({method} {path}): {reason}"
            ) from None

    def _expect(self, reply: _Reply, what: str) -> Any:
        """The JSON of a 200 reply; NotFound for 404; ComputeError for anything else."""
        if reply.status == 200:
            return reply.json(f"to {what}")
        if reply.status == 404:
            raise NotFound(f"no job on the Ray cluster at {self.address} for the request to {what}")
        raise ComputeError(
            f"the Ray Jobs API at {self.address} failed to {what}: HTTP {reply.status}: {reply.text()}"
        )

    def _list_cluster(self) -> list[dict[str, Any]]:
        """Every job the cluster knows (all scopes, Ray drivers included)."""
        jobs = self._expect(self._send("GET", "/api/jobs/"), "list its jobs")
        if not isinstance(jobs, list):
            raise ComputeError(f"the Ray Jobs API listed its jobs as {type(jobs).__name__}, not a list")
        return [details for details in jobs if isinstance(details, dict)]

    def _details(self, job_id: str) -> dict[str, Any]:
        """Ray's record of one of this scope's jobs; NotFound for any other (Ray also resolves its own ids)."""
        scope = self._scope()
        missing = NotFound(f"no job {job_id!r} of this workspace on the Ray cluster at {self.address}")
        if scope is None:
            raise missing
        reply = self._send("GET", f"/api/jobs/{job_id}")
        if reply.status == 404:
            raise missing
        details = self._expect(reply, f"report job {job_id}")
        if (
            not isinstance(details, dict)
            or details.get("submission_id") != job_id
            or not self._owned(details, scope)
        ):
            raise missing
        return details

    # -- mapping ---------------------------------------------------------------------------------------------

    def _entrypoint(self, req: LaunchRequest) -> str:
        steps = [_PRINT_MARK]
        if req.workdir is not None:
            steps.append(f"cd -- {shlex.quote(req.workdir)}")
        steps.append(f"exec {shlex.join(req.argv)}")
        return " && ".join(steps)

    def _submission(self, req: LaunchRequest, job_id: str, scope: str) -> dict[str, Any]:
        env = {**req.env, "ARCHIPEL_JOB_ID": job_id, "RAY_JOB_STOP_WAIT_TIME_S": str(self.stop_grace_s)}
        body: dict[str, Any] = {
            "entrypoint": self._entrypoint(req),
            "submission_id": job_id,
            "runtime_env": {"env_vars": env},
            "metadata": {
                _SCOPE_KEY: scope,
                _NAME_KEY: req.name,
                _CREATED_KEY: repr(time.time()),
                _RESOURCES_KEY: json.dumps(req.resources.to_json()),
                _LABELS_KEY: json.dumps(dict(req.labels)),
            },
            "entrypoint_num_cpus": req.resources.cpus,
        }
        if req.resources.memory_bytes:
            body["entrypoint_memory"] = req.resources.memory_bytes
        accelerators = req.resources.accelerators
        if accelerators:
            body["entrypoint_num_gpus"] = sum(accelerators.values())
            kinds = {
                f"accelerator_type:{name}": _ACCELERATOR_TYPE_SHARE for name in accelerators if name != _GPU
            }
            if kinds:
                body["entrypoint_resources"] = kinds
        return body

    def _used(self, cluster: list[dict[str, Any]], scope: str) -> Resources:
        """The resources of the jobs of ``scope`` in ``cluster`` that are not terminal."""
        used = Resources(cpus=0)
        cancelled = self._cancel_records()
        for details in cluster:
            if not self._owned(details, scope):
                continue
            if not self._to_status(details, cancelled.get(details["submission_id"])).state.terminal:
                used = used + self._resources_of(details)
        return used

    @staticmethod
    def _owned(details: Mapping[str, Any], scope: str) -> bool:
        metadata = details.get("metadata")
        return (
            details.get("type") == "SUBMISSION"
            and isinstance(details.get("submission_id"), str)
            and isinstance(metadata, dict)
            and metadata.get(_SCOPE_KEY) == scope
        )

    @staticmethod
    def _created_at(details: Mapping[str, Any]) -> float:
        try:
            return float(details["metadata"][_CREATED_KEY])
        except (KeyError, TypeError, ValueError):
            return (details.get("start_time") or 0) / 1000

    @staticmethod
    def _resources_of(details: Mapping[str, Any]) -> Resources:
        try:
            return Resources.from_json(json.loads(details["metadata"][_RESOURCES_KEY]))
        except (KeyError, TypeError, ValueError, SpecError) as exc:
            raise ComputeError(
                f"job {details.get('submission_id')} on the Ray cluster has no readable resources: {exc}"
            ) from None

    def _to_status(self, details: Mapping[str, Any], cancelled: Mapping[str, Any] | None) -> JobStatus:
        """archipel's view of Ray's record of a job (see the mapping in the module docstring).

        ``cancelled`` is this backend's record of a cancel Ray could not act on yet: it wins over Ray's state.
        """
        job_id = details["submission_id"]
        metadata = details.get("metadata") or {}
        if cancelled is not None:
            return JobStatus(
                job_id,
                JobState.CANCELLED,
                ended_at=cancelled["ended_at"],
                message=_CANCELLED_PENDING,
                name=metadata.get(_NAME_KEY, ""),
            )
        ray_state = details.get("status")
        code = details.get("driver_exit_code")
        message = details.get("message") or ""
        if ray_state in ("PENDING", "RUNNING"):
            state = JobState(ray_state)
        elif ray_state == "SUCCEEDED":
            state, message = JobState.SUCCEEDED, describe_exit(code)
        elif ray_state == "STOPPED":
            state, message = JobState.CANCELLED, f"cancelled: {message or 'stopped through the Ray Jobs API'}"
        elif ray_state == "FAILED":
            state = (
                JobState.LOST if details.get("error_type") == "JOB_SUPERVISOR_ACTOR_DIED" else JobState.FAILED
            )
            if code is not None:  # Ray's message repeats the log's tail, which logs() already gives
                message = describe_exit(code)
        else:
            raise ComputeError(f"job {job_id} is in a state archipel does not know: {ray_state!r}")
        start, end = details.get("start_time"), details.get("end_time")
        return JobStatus(
            job_id,
            state,
            exit_code=code if isinstance(code, int) else None,
            started_at=start / 1000 if start is not None and state is not JobState.PENDING else None,
            ended_at=end / 1000 if end is not None and state.terminal else None,
            message=message,
            name=metadata.get(_NAME_KEY, ""),
        )

    # -- local state -----------------------------------------------------------------------------------------

    def _scope(self) -> str | None:
        """This backend's scope token; None before the first launch made it."""
        path = self.state_dir / "scope"
        try:
            return path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ComputeError(f"cannot read {path}: {exc}") from None

    def _make_scope(self) -> str:
        """The scope token, made now if there is none yet. The caller holds :func:`locked_state`."""
        token = self._scope()
        if token is None:
            token = secrets.token_hex(16)
            tmp = self.state_dir / f".scope.{os.getpid()}.tmp"
            tmp.write_text(token + "\n", encoding="ascii")
            os.replace(tmp, self.state_dir / "scope")  # readers see the whole token or no file
        return token

    def _cancel_records(self, job_id: str | None = None) -> dict[str, dict[str, Any]]:
        """This backend's records of jobs cancelled while Ray held them PENDING: all, or ``job_id``'s."""
        folder = self.state_dir / _CANCELLED_DIR
        names = [job_id] if job_id is not None else (os.listdir(folder) if folder.is_dir() else [])
        records = {}
        for name in names:
            if not JOB_ID.fullmatch(name):
                continue  # a temporary file
            try:
                records[name] = json.loads((folder / name).read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise ComputeError(f"cannot read {folder / name}: {exc}") from None
        return records

    def _record_cancel(self, job_id: str) -> None:
        folder = self.state_dir / _CANCELLED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{job_id}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"ended_at": time.time()}), encoding="utf-8")
        os.replace(tmp, folder / job_id)  # readers see the whole record or none
